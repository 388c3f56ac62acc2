"""xdl's ThreeLayerConvNet in PyTorch, the baseline users compare with
(examples/benchmark.py times one step of it, examples/train_cnn.py a whole
training run). The same layers (conv - relu - 2x2 max pool - affine - relu -
affine), the same loss (softmax cross-entropy + 0.5 * reg * the sum of the
squared weights) and Adam over every parameter. PyTorch is never a
dependency of xdl: load_torch returns None without it.
"""
import time

import numpy as np


def load_torch(device, threads):
    """
    Inputs:
    - device: 'cpu' or 'cuda'
    - threads: PyTorch's CPU threads (the same as xdl's kernels)

    Returns a tuple of:
    - torch, or None when it is not installed or has no usable CUDA
    - note: a few words for the report ('2.13.0 on cpu', 'not installed', ...)
    """
    try:
        import torch
    except ImportError:
        return None, "not installed"
    torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            return None, "%s has no usable CUDA: no torch baseline" % torch.__version__
        # Full float32 GEMMs, as CuPy does by default.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch, "%s on %s" % (torch.__version__, device)


def sync(torch, device):
    """Wait for the work queued on the device."""
    if device == "cuda":
        torch.cuda.synchronize()


class TorchCNN:
    """
    The network, loss and Adam of ThreeLayerConvNet + Solver in PyTorch.

    Inputs:
    - torch: the torch module; device: 'cpu' or 'cuda'; dtype: numpy float dtype
    - num_filters, filter_size, hidden_dim, reg, num_classes: as ThreeLayerConvNet
      (input (3, 32, 32))
    - learning_rate: Adam's
    - seed: torch's seed for the initial weights
    """

    def __init__(self, torch, device, dtype, num_filters=32, filter_size=7, hidden_dim=500,
                 reg=1e-3, num_classes=10, learning_rate=1e-3, seed=0):
        nn = torch.nn
        self.torch, self.device, self.reg = torch, device, reg
        self.dtype = getattr(torch, np.dtype(dtype).name)
        torch.manual_seed(seed)
        pooled = num_filters * 16 * 16
        self.net = nn.Sequential(
            nn.Conv2d(3, num_filters, filter_size, padding=(filter_size - 1) // 2), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(pooled, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes),
        ).to(device=device, dtype=self.dtype)
        self.weights = [self.net[0].weight, self.net[4].weight, self.net[6].weight]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=learning_rate)
        self.loss_fn = nn.CrossEntropyLoss()

    def tensor(self, a, labels=False):
        """A host array as a tensor on the device (labels as int64)."""
        t = self.torch.as_tensor(np.asarray(a))
        return t.to(self.device, dtype=self.torch.int64 if labels else self.dtype)

    def step(self, X, y):
        """One Adam step on the minibatch (X, y) (tensors on the device); returns the loss."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(X), y)
        loss = loss + 0.5 * self.reg * sum((w * w).sum() for w in self.weights)
        loss.backward()
        self.opt.step()
        return loss

    def accuracy(self, X, y, batch_size=1000):
        """The fraction of (X, y) (tensors on the device) classified correctly."""
        correct = 0
        with self.torch.no_grad():
            for i in range(0, X.shape[0], batch_size):
                scores = self.net(X[i:i + batch_size])
                correct += int((scores.argmax(dim=1) == y[i:i + batch_size]).sum())
        return correct / max(1, X.shape[0])


def time_training(torch, device, data, steps, batch_size, seed=0, **model_kw):
    """
    Train TorchCNN for `steps` Adam steps on random minibatches of
    data['X_train'] (drawn on the device, as the Solver draws them), and
    check its validation accuracy.

    Inputs:
    - torch, device: from load_torch; data: the Solver's data dict (host arrays)
    - steps, batch_size: as the xdl run; seed: weights and minibatches
    - model_kw: TorchCNN's keyword arguments (dtype, num_filters, ...)

    Returns a dict with:
    - step_s: seconds in the training steps (minibatch gather included)
    - val_acc: validation accuracy after training
    """
    model = TorchCNN(torch, device, seed=seed, **model_kw)
    X = model.tensor(data["X_train"])
    y = model.tensor(data["y_train"], labels=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    step_s = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        idx = torch.randint(X.shape[0], (batch_size,), generator=generator, device=device)
        model.step(X[idx], y[idx])
        sync(torch, device)
        step_s += time.perf_counter() - start
    val_acc = model.accuracy(model.tensor(data["X_val"]), model.tensor(data["y_val"], labels=True))
    return {"step_s": step_s, "val_acc": val_acc}
