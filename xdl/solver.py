"""The Solver: minibatch training of a model with an update rule from
``xdl.optim``, accuracy checks, learning-rate decay, best-model tracking and
checkpoints.

The data set stays on the host; each minibatch is moved to the model's
device by ``model.loss``. Histories hold plain Python floats, so they plot
and pickle on any backend.
"""
import contextlib
import math
import numbers
import sys
import time
import warnings

import numpy as np

from xdl import _rng, optim, serialization
from xdl.backends import (asarray_like, device_free_bytes, get_array_module, host_floats,
                          is_cupy_array)
from xdl._checks import check_labels, check_nonneg_int, check_positive_int, labels_checked


class TrainingStopped(UserWarning):
    """Training stopped early because the loss became NaN or infinite."""


class Solver:
    """
    A Solver encapsulates all the logic necessary for training classification
    models. The Solver performs stochastic gradient descent using different
    update rules defined in optim.py.

    The solver accepts both training and validation data and labels so it can
    periodically check classification accuracy on both training and validation
    data to watch out for overfitting.

    To train a model, you will first construct a Solver instance, passing the
    model, dataset, and various options (learning rate, batch size, etc) to the
    constructor. You will then call the train() method to run the optimization
    procedure and train the model.

    After the train() method returns, model.params will contain the parameters
    that performed best on the validation set over the course of training.
    In addition, the instance variable solver.loss_history will contain a list
    of all losses encountered during training and the instance variables
    solver.train_acc_history and solver.val_acc_history will be lists of the
    accuracies of the model on the training and validation set at each epoch.

    From the second step of each train() call on, the update rules of
    xdl.optim write each parameter's next value over the array the step
    before made (their out=w), which saves memory and time; the arrays the
    model held before train() are never modified (xdl/DESIGN.md, "Update
    rules").

    Example usage might look something like this:

    data = {
      'X_train': # training data
      'y_train': # training labels
      'X_val': # validation data
      'y_val': # validation labels
    }
    model = MyAwesomeModel(hidden_size=100, reg=10)
    solver = Solver(model, data,
                    update_rule='sgd',
                    optim_config={
                      'learning_rate': 1e-4,
                    },
                    lr_decay=0.95,
                    num_epochs=5, batch_size=200,
                    print_every=100)
    solver.train()

    A Solver works on a model object that must conform to the following API:

    - model.params must be a dictionary mapping string parameter names to
      arrays containing parameter values.

    - model.loss(X, y) must be a function that computes training-time loss and
      gradients, and test-time classification scores, with the following inputs
      and outputs:

      Inputs:
      - X: Array giving a minibatch of input data of shape (N, d_1, ..., d_k)
      - y: Array of labels, of shape (N,) giving labels for X where y[i] is the
        label for X[i].

      Returns:
      If y is None, run a test-time forward pass and return:
      - scores: Array of shape (N, C) giving classification scores for X where
        scores[i, c] gives the score of class c for X[i].

      If y is not None, run a training time forward and backward pass and
      return a tuple of:
      - loss: Scalar giving the loss
      - grads: Dictionary with the same keys as self.params mapping parameter
        names to gradients of the loss with respect to those parameters.

    - Optionally (xdl's ThreeLayerConvNet does), model.in_place_params names
      parameters whose update the model can take during its backward pass,
      and model.loss then takes a keyword argument in_place_steps: with
      update_rule 'adam' or 'adamw', from the second step of each train()
      call the Solver passes the steps it would take on those parameters in
      place (xdl.optim.InPlaceStep, by name); the model takes each beside
      other work (InPlaceStep.take_alongside: the CNN's W2 beside its
      convolution's backward pass), and the Solver applies every step that
      was not taken. The weights, moments and losses are the same, bit for
      bit.
    """

    def __init__(self, model, data, update_rule="sgd", optim_config=None, lr_decay=1.0,
                 batch_size=100, num_epochs=10, num_train_samples=1000,
                 num_val_samples=None, checkpoint_name=None, print_every=10, verbose=True):
        """
        Construct a new Solver instance.

        Required arguments:
        - model: A model object conforming to the API described above
        - data: A dictionary of training and validation data containing:
          'X_train': Array, shape (N_train, d_1, ..., d_k) of training images
          'X_val': Array, shape (N_val, d_1, ..., d_k) of validation images
          'y_train': Array, shape (N_train,) of labels for training images
          'y_val': Array, shape (N_val,) of labels for validation images

        Optional arguments:
        - update_rule: A string giving the name of an update rule in optim.py
          ('sgd', 'sgd_momentum', 'rmsprop', 'adam'), or such a function.
          Default is 'sgd'.
        - optim_config: A dictionary containing hyperparameters that will be
          passed to the chosen update rule. Each update rule requires different
          hyperparameters (see optim.py) but all update rules require a
          'learning_rate' parameter so that should always be present.
        - lr_decay: A scalar for learning rate decay; after each epoch the
          learning rate is multiplied by this value.
        - batch_size: Size of minibatches used to compute loss and gradient
          during training.
        - num_epochs: The number of epochs to run for during training.
        - print_every: Integer; training losses will be printed every
          print_every iterations (0 prints none).
        - verbose: Boolean; if set to false then no output will be printed
          during training.
        - num_train_samples: Number of training samples used to check training
          accuracy; default is 1000; set to None to use entire training set.
        - num_val_samples: Number of validation samples to use to check val
          accuracy; default is None, which uses the entire validation set.
        - checkpoint_name: If not None, then save model checkpoints here every
          epoch (file '<checkpoint_name>_epoch_<e>.npz', written atomically).

        Minibatch indices (and the subsamples of the accuracy checks) are
        drawn where the data lives by xdl._rng's counter-based generator,
        seeded from NumPy's global generator: np.random.seed fixes them, and
        they are the same on every backend. When the model is on the GPU,
        train() copies the training and validation sets there once (when
        they fit in half of the free GPU memory) and checks accuracy in
        batches of ``device_batch_size``.
        """
        self.model = model
        for key in ("X_train", "y_train", "X_val", "y_val"):
            if key not in data:
                raise ValueError("data is missing %r (it needs X_train, y_train, X_val, y_val)"
                                 % key)
        self.X_train, self.y_train = data["X_train"], self._host_labels(data, "train")
        self.X_val, self.y_val = data["X_val"], self._host_labels(data, "val")
        # Label values are checked here, once; the training steps then skip
        # the check (on the GPU it would copy back to the host every step).
        # A model that does not say its num_classes keeps its own checks.
        num_classes = getattr(model, "num_classes", None)
        self._labels_prechecked = isinstance(num_classes, numbers.Integral)
        if self._labels_prechecked:
            for split, y in (("train", self.y_train), ("val", self.y_val)):
                check_labels(y, y.shape[0], int(num_classes), "y_" + split)

        self.update_rule_name = update_rule if isinstance(update_rule, str) else \
            getattr(update_rule, "__name__", repr(update_rule))
        self.update_rule = optim.get_update_rule(update_rule)
        if optim_config is not None and not isinstance(optim_config, dict):
            raise TypeError("optim_config must be a dict or None, got %s"
                            % type(optim_config).__name__)
        self.optim_config = dict(optim_config or {})
        rule_name = next((k for k, f in optim.UPDATE_RULES.items() if f is self.update_rule), None)
        if rule_name in optim.RULES:  # a misspelled key fails here, not at the first step
            optim.check_config(rule_name, self.optim_config)
        # xdl.optim's rules take out=w (see _step); a rule of the user's is
        # called as (w, dw, config).
        self._rule_takes_out = rule_name in optim.RULES
        # The model may take adam/adamw steps on these parameters itself (see _step).
        self._in_place_rule = rule_name if rule_name in ("adam", "adamw") else None
        self._in_place_params = tuple(getattr(model, "in_place_params", ()))
        if not (isinstance(lr_decay, numbers.Real) and lr_decay > 0):
            raise ValueError("lr_decay must be a number > 0, got %r" % (lr_decay,))
        self.lr_decay = float(lr_decay)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_epochs = check_nonneg_int(num_epochs, "num_epochs")
        self.num_train_samples = None if num_train_samples is None else \
            check_positive_int(num_train_samples, "num_train_samples")
        self.num_val_samples = None if num_val_samples is None else \
            check_positive_int(num_val_samples, "num_val_samples")
        self.checkpoint_name = checkpoint_name
        self.print_every = check_nonneg_int(print_every, "print_every")
        self.verbose = verbose
        self._reset()

    @staticmethod
    def _host_labels(data, split):
        X, y = data["X_" + split], data["y_" + split]
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        if not hasattr(y, "shape") or y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError("y_%s must have shape (%d,) to match X_%s %s, got %s"
                             % (split, X.shape[0], split, tuple(X.shape),
                                getattr(y, "shape", type(y).__name__)))
        if y.dtype.kind not in "iu":
            raise TypeError("y_%s must hold integer class labels, got dtype %s" % (split, y.dtype))
        return y

    def _reset(self):
        """
        Set up some book-keeping variables for optimization. Don't call this
        manually.
        """
        self.epoch = 0
        self.iteration = 0
        self.best_val_acc = -1.0
        self.best_epoch = None
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.stopped = None  # (iteration, loss) when training stopped on a bad loss
        self._train_set = (self.X_train, self.y_train)  # train() moves it to the model's device
        self.step_time = 0.0  # seconds in training steps during the last train() call
        self.steps_taken = 0
        self._pending_losses = []

        # Make a deep copy of the optim_config for each parameter
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}
        self._own_params = {}  # see _step

    # -- one step --------------------------------------------------------------

    def _step(self):
        """
        Make a single gradient update. This is called by train() and should not
        be called manually.
        """
        X_train, y_train = self._train_set
        batch_mask = _rng.integers(get_array_module(X_train), self.batch_size,
                                   X_train.shape[0], _rng.new_seed())
        X_batch = X_train[batch_mask]
        y_batch = y_train[batch_mask]

        # The steps on the arrays the Solver owns (see below) that the model
        # can take itself: the CNN takes W2's beside its convolution's
        # backward pass (Adam's pass over the 16 MB W2 is bound by memory,
        # the convolution by arithmetic; on the CPU they share the cores).
        own = self._own_params
        steps = {}
        if self._in_place_rule:
            for p in self._in_place_params:
                w = self.model.params.get(p)
                if w is not None and own.get(p) is w:
                    steps[p] = optim.in_place_step(self._in_place_rule, w, self.optim_configs[p])
        with labels_checked() if self._labels_prechecked else contextlib.nullcontext():
            if steps:
                loss, grads = self.model.loss(X_batch, y_batch, in_place_steps=steps)
            else:
                loss, grads = self.model.loss(X_batch, y_batch)
        self._pending_losses.append(loss)

        # From the second step of a train() call on, a parameter is the
        # array the last step's update rule made, which only the model
        # holds: the rule writes next_w over it (out=w), which saves a new
        # array and its memory traffic (for the CNN's 16 MB W2, about a
        # tenth of Adam's time). Arrays the model had before train() are
        # never modified, nor the snapshots in best_params.
        for p, w in self.model.params.items():
            if p in steps and steps[p].applied:
                continue  # the model took this step on w in place; its config is up to date
            if self._rule_takes_out and own.get(p) is w:
                next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p], out=w)
            else:
                next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = own[p] = next_w
            self.optim_configs[p] = next_config

    def _flush_losses(self):
        """
        Move pending losses into loss_history as Python floats (on the GPU this
        is the only synchronization of a step, done in batches). Returns the
        (iteration, value) of the first non-finite loss, or None.
        """
        bad = None
        pending, self._pending_losses = self._pending_losses, []
        values = host_floats(pending)
        first = len(self.loss_history)
        for i, v in enumerate(values):
            if bad is None and not math.isfinite(v):
                bad = (first + i, v)
        self.loss_history.extend(values)
        return bad

    # -- accuracy ----------------------------------------------------------------

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """
        Check accuracy of the model on the provided data.

        Inputs:
        - X: Array of data, of shape (N, d_1, ..., d_k)
        - y: Array of labels, of shape (N,)
        - num_samples: If not None, subsample the data and only test the model
          on num_samples datapoints.
        - batch_size: Split X and y into batches of this size to avoid using
          too much memory.

        Returns:
        - acc: Scalar (Python float) giving the fraction of instances that were
          correctly classified by the model.
        """
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            mask = _rng.integers(get_array_module(X), num_samples, N, _rng.new_seed())
            N = num_samples
            X = X[mask]
            y = y[mask]
        if N == 0:
            return 0.0
        batch_size = check_positive_int(batch_size, "batch_size")
        preds = []
        xp = None
        for start in range(0, N, batch_size):
            scores = self.model.loss(X[start:start + batch_size])
            xp = get_array_module(scores)
            preds.append(xp.argmax(scores, axis=1))
        y_pred = xp.concatenate(preds)
        y_dev = asarray_like(y, y_pred)
        return float((y_pred == y_dev).mean())

    # -- checkpoints -------------------------------------------------------------

    def checkpoint_state(self):
        """
        Everything needed to resume training, as a nested dict of arrays and
        values: the model's ``state()`` under 'params', the update rules'
        state under 'optim_configs/<param>/...', the best parameters, the
        histories and NumPy's random state.
        """
        return {
            "update_rule": self.update_rule_name,
            "lr_decay": self.lr_decay,
            "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "params": self.model.state(),
            "optim_configs": self.optim_configs,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "best_params": self.best_params,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
            "rng_state": _rng_state_to_dict(np.random.get_state()),
        }

    def _checkpoint_info(self):
        return {"model": type(self.model).__name__, "epoch": self.epoch,
                "iteration": self.iteration}

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return None
        filename = "%s_epoch_%d.npz" % (self.checkpoint_name, self.epoch)
        if self.verbose:
            print('Saving checkpoint to "%s"' % filename)
        serialization.save_state(filename, self.checkpoint_state(), kind="checkpoint",
                                 info=self._checkpoint_info())
        return filename

    def load_checkpoint(self, filename):
        """
        Restore the model, update-rule state, histories, best parameters and
        NumPy's random state from a checkpoint written by this Solver's
        ``checkpoint_name`` option. A later ``train()`` continues where the
        checkpoint was taken, up to ``num_epochs``.
        """
        saved = serialization.load_file(filename, kind="checkpoint",
                                        loader="Solver.load_checkpoint")
        model_name = type(self.model).__name__
        if saved.info.get("model") != model_name:
            raise ValueError("%s is a checkpoint of a %s, not of a %s"
                             % (filename, saved.info.get("model"), model_name))
        state = saved.state
        # The model checks names and shapes and moves its arrays to its device.
        self.model.load_state(state["params"], source=filename)
        like = next(iter(self.model.params.values()))

        def to_model(tree):
            if isinstance(tree, dict):
                return {k: to_model(v) for k, v in tree.items()}
            if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
                return asarray_like(tree, like, dtype=like.dtype)
            return tree

        self.optim_configs = to_model(state["optim_configs"])
        self.best_params = to_model(state["best_params"])
        self.best_val_acc = state["best_val_acc"]
        self.best_epoch = state["best_epoch"]
        self.epoch = state["epoch"]
        self.iteration = state["iteration"]
        self.loss_history = list(state["loss_history"])
        self.train_acc_history = list(state["train_acc_history"])
        self.val_acc_history = list(state["val_acc_history"])
        self._pending_losses = []
        np.random.set_state(_rng_state_from_dict(state["rng_state"]))

    # -- training ----------------------------------------------------------------

    #: Batch size of the accuracy checks when the model is on the GPU.
    device_batch_size = 2000

    def _on_model_device(self, X, y):
        """
        (X, y) on the model's device, X in the model's dtype: copied once when
        it fits in half of the free GPU memory, else (X, y) as they are, with a
        one-line notice (each minibatch is then copied when it is used).
        """
        ref = next(iter(self.model.params.values()))
        if is_cupy_array(X):
            return X.astype(ref.dtype, copy=False), asarray_like(y, ref)
        nbytes = X.size * ref.dtype.itemsize + y.size * 8
        free = device_free_bytes()
        if nbytes > free // 2:
            if self.verbose:
                print("note: the %d samples (%.0f MB) do not fit in the GPU's free memory "
                      "(%.0f MB): each minibatch is copied from the host"
                      % (X.shape[0], nbytes / 1e6, free / 1e6))
            return X, y
        return asarray_like(X, ref, dtype=ref.dtype), asarray_like(y, ref)

    def _snapshot_params(self):
        return {k: v.copy() for k, v in self.model.params.items()}

    def _stop_on_bad_loss(self, bad):
        it, value = bad
        self.stopped = (it, value)
        msg = ("training stopped at iteration %d (epoch %d): the loss is %r. "
               % (it + 1, self.epoch, value))
        if self.best_epoch is not None:
            msg += ("The parameters were restored to those with the best validation "
                    "accuracy, %f at epoch %d. " % (self.best_val_acc, self.best_epoch))
        else:
            msg += "The parameters were restored to their values before training. "
        msg += "Lower the learning rate or the weight scale."
        warnings.warn(msg, TrainingStopped, stacklevel=3)
        if self.verbose:
            print(msg)

    def _progress(self, message):
        """
        A progress line, on stderr so that stdout keeps exactly the notebooks'
        (Iteration ...) and (Epoch ...) lines.
        """
        if self.verbose:
            sys.stdout.flush()  # keep the two streams in order in a log file
            print("[%s]" % message, file=sys.stderr, flush=True)

    def _check_accuracies(self, val_set, batch_size):
        """Training and validation accuracy; the sets are where train() put them."""
        if self.num_train_samples is None:  # the full pass over the training set
            self._progress("checking the accuracy on all %d training images"
                           % self.X_train.shape[0])
        train_acc = self.check_accuracy(*self._train_set, num_samples=self.num_train_samples,
                                        batch_size=batch_size)
        val_acc = self.check_accuracy(*val_set, num_samples=self.num_val_samples,
                                      batch_size=batch_size)
        return train_acc, val_acc

    def train(self):
        """
        Run optimization to train the model. Stops early, restoring the best
        parameters, if the loss becomes NaN or infinite (see ``self.stopped``).

        With verbose, prints the notebooks' lines on stdout and, on stderr,
        each epoch's time with an estimate of the time left. Afterwards
        ``self.step_time`` holds the seconds this call spent in training steps
        (forward, backward, update; not the accuracy checks or checkpoints)
        and ``self.steps_taken`` the number of those steps.
        """
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        on_gpu = is_cupy_array(next(iter(self.model.params.values()), None))
        if on_gpu:
            self._train_set = self._on_model_device(self.X_train, self.y_train)
            val_set = self._on_model_device(self.X_val, self.y_val)
        else:
            val_set = (self.X_val, self.y_val)
        # Accuracy checks on the GPU run in large batches (one sync per check).
        acc_batch = self.device_batch_size if on_gpu else 100
        if not self.best_params:
            self.best_params = self._snapshot_params()
        self._own_params = {}
        self.stopped = None
        self.step_time = 0.0
        self.steps_taken = 0
        train_start = epoch_start = time.perf_counter()
        first_t = self.iteration

        for t in range(self.iteration, num_iterations):
            step_start = time.perf_counter()
            self._step()
            self.iteration = t + 1
            self.steps_taken += 1

            print_now = self.verbose and self.print_every > 0 and t % self.print_every == 0
            epoch_end = (t + 1) % iterations_per_epoch == 0
            first_it = t == 0
            last_it = t == num_iterations - 1
            check_now = first_it or last_it or epoch_end
            # On the GPU, losses are fetched in batches so that steps queue up;
            # fetching waits for the queued steps, so their time counts here.
            if print_now or check_now or not on_gpu or len(self._pending_losses) >= 32:
                bad = self._flush_losses()
                if bad is not None:
                    self.step_time += time.perf_counter() - step_start
                    self._stop_on_bad_loss(bad)
                    break
            self.step_time += time.perf_counter() - step_start

            if print_now:
                print("(Iteration %d / %d) loss: %f" % (t + 1, num_iterations,
                                                        self.loss_history[-1]))

            # At the end of every epoch, increment the epoch counter and decay
            # the learning rate.
            if epoch_end:
                self.epoch += 1
                for k in self.optim_configs:
                    if "learning_rate" in self.optim_configs[k]:
                        self.optim_configs[k]["learning_rate"] *= self.lr_decay

            # Check train and val accuracy on the first iteration, the last
            # iteration, and at the end of each epoch.
            if check_now:
                train_acc, val_acc = self._check_accuracies(val_set, acc_batch)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)

                if self.verbose:
                    print("(Epoch %d / %d) train acc: %f; val_acc: %f"
                          % (self.epoch, self.num_epochs, train_acc, val_acc))

                # Keep track of the best model
                if val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_epoch = self.epoch
                    self.best_params = self._snapshot_params()
                if epoch_end or last_it:
                    self._save_checkpoint()

            if epoch_end:
                now = time.perf_counter()
                elapsed = now - train_start
                left = elapsed / (t + 1 - first_t) * (num_iterations - t - 1)
                self._progress("epoch %d / %d took %s; %s elapsed, about %s left"
                               % (self.epoch, self.num_epochs, _duration(now - epoch_start),
                                  _duration(elapsed), _duration(left)))
                epoch_start = now
        else:
            self._flush_losses()

        # At the end of training swap the best params into the model
        self.model.params = dict(self.best_params)
        self._own_params = {}
        self._train_set = (self.X_train, self.y_train)  # frees the device copy


def _duration(seconds):
    """A duration for people: '4.2 s', '3 min 05 s', '1 h 02 min'."""
    if seconds < 60:
        return "%.1f s" % seconds
    seconds = int(round(seconds))
    if seconds < 3600:
        return "%d min %02d s" % (seconds // 60, seconds % 60)
    return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)


def _rng_state_to_dict(state):
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": np.asarray(keys), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _rng_state_from_dict(state):
    return (state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
            state["has_gauss"], state["cached_gaussian"])
