#!/usr/bin/env bash
# GPU check for xdl, for a machine with an NVIDIA GPU, CuPy and no internet.
#
#   bash tests/gpu_check.sh          # from anywhere; logs go to $OUT (or a temp dir)
#
# Sections, each with its own log and time limit, within one overall budget
# (GPU_CHECK_SECONDS, default 330 s, so the whole run ends within 6 minutes).
# The main job and the benchmark run before the long test sections, so that
# they are never starved of time:
#   env         what the machine has (GPU, CUDA, Python packages; setuptools
#               must be >= 77 for pyproject's license field without isolation)
#   install     pip install --no-index --no-build-isolation --no-deps -e .
#   data        CIFAR-10 built from .gpu/data (cifar10-jpeg.tar.gz and
#               build_cifar10.py, carried in the git-ignored .gpu/ folder) into
#               a temp dir; without them the training runs on --synthetic data
#   train-cnn   examples/train_cnn.py for one epoch on the GPU
#   benchmark   examples/benchmark.py --device cuda --dtype float32
#   tests-gpu   tests/test_kernel_contract.py, test_cuda_kernels.py, test_cross_backend.py
#   tests-rest  the rest of the suite
#               (both with XDL_BACKEND=cuda XDL_TEST_REQUIRE_GPU=1 CUPY_TF32=0
#               NVIDIA_TF32_OVERRIDE=0: a GPU test that skips is a failure)
# A fresh machine compiles every CuPy kernel with NVRTC on first use (1-3 s
# each); CUPY_NVRTC_USE_PCH=1 (a precompiled header) cuts that down.
# GPU_CHECK_ONLY="tests-gpu tests-rest" runs only the named sections (a
# rerun of what failed, on a machine where install already ran).
# A failing section does not stop the later ones; the exit status is non-zero
# if any failed (or ran out of time). The last lines printed are a summary.
set -u
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
py="${PYTHON:-python3}"
budget="${GPU_CHECK_SECONDS:-330}"
t_start=$(date +%s)

export XDL_BACKEND=cuda XDL_TEST_REQUIRE_GPU=1 CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0
export CUPY_NVRTC_USE_PCH=1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INPUT=1

summary=()
failed=0

# run_section NAME LIMIT COMMAND...: run COMMAND with a time limit (cut to
# what is left of the budget), its output shown and kept in $out/NAME.log.
run_section() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
        summary+=("$(printf '%-11s skipped (GPU_CHECK_ONLY)' "$name")")
        return 1
    fi
    local left=$((budget - ($(date +%s) - t_start)))
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "===================== $name (limit ${limit}s) ====================="
    if [ "$limit" -lt 5 ]; then
        echo "not run: the time budget of ${budget}s is spent"
        summary+=("$(printf '%-11s FAILED (not run: out of time)' "$name")")
        failed=1
        return 1
    fi
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > >(tee "$out/$name.log") 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        summary+=("$(printf '%-11s ok (%ds)' "$name" "$dt")")
    else
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && rc="$rc, timed out after ${limit}s"
        summary+=("$(printf '%-11s FAILED (exit %s, %ds)' "$name" "$rc" "$dt")")
        failed=1
    fi
    return 0
}

# What the machine has; fails when CuPy cannot see a GPU.
env_report() {
    command -v nvidia-smi > /dev/null && nvidia-smi -L
    "$py" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("cupy", "numpy", "scipy", "Cython", "setuptools", "pytest", "PIL", "matplotlib",
             "torch"):
    try:
        mod = importlib.import_module(name)
        print("%-10s %s" % (name, getattr(mod, "__version__", "?")))
    except Exception as exc:
        print("%-10s MISSING (%s)" % (name, exc))
import setuptools
if int(setuptools.__version__.split(".")[0]) < 77:
    print("WARNING: setuptools %s < 77: the editable install without build isolation "
          "may reject pyproject.toml" % setuptools.__version__)
import cupy
print("GPU:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
      "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| driver", cupy.cuda.runtime.driverGetVersion())
PY
}
export -f env_report
export py

pytest_args=(-p no:cacheprovider -q -ra --durations=10)

run_section env 20 bash -c env_report
# No index, no dependencies, no build isolation: nothing is downloaded.
run_section install 90 \
    "$py" -m pip install --no-index --no-build-isolation --no-deps -e .
data_flag=(--synthetic)
if [ -f "$root/.gpu/data/cifar10-jpeg.tar.gz" ] && [ -f "$root/.gpu/data/build_cifar10.py" ]; then
    data_dir=$(mktemp -d)
    if run_section data 50 "$py" "$root/.gpu/data/build_cifar10.py" "$data_dir" \
            && [ -f "$data_dir/cifar-10-batches-py/test_batch" ]; then
        data_flag=(--data-dir "$data_dir")
    fi
else
    echo
    echo "no .gpu/data/cifar10-jpeg.tar.gz + build_cifar10.py: training on --synthetic data"
fi
# The plots and model go to a temp dir: the device tool brings back at most 8
# files from $OUT, and the logs are the ones that matter.
run_section train-cnn 70 "$py" examples/train_cnn.py --epochs 1 "${data_flag[@]}" \
    --out-dir "$(mktemp -d)"
run_section benchmark 75 "$py" examples/benchmark.py --device cuda --dtype float32
run_section tests-gpu 100 "$py" -m pytest "${pytest_args[@]}" \
    tests/test_kernel_contract.py tests/test_cuda_kernels.py tests/test_cross_backend.py
run_section tests-rest 100 "$py" -m pytest "${pytest_args[@]}" tests \
    --ignore=tests/test_kernel_contract.py --ignore=tests/test_cuda_kernels.py \
    --ignore=tests/test_cross_backend.py

echo
echo "===================== summary ($(($(date +%s) - t_start))s; logs in $out)"
# pytest's failures and closing line, and the training's speed and accuracy.
pytest_lines='^(FAILED|ERROR) |(passed|failed|error).* in [0-9.]+s'
for name in tests-gpu tests-rest; do
    [ -f "$out/$name.log" ] && grep -E "$pytest_lines" "$out/$name.log" | tail -25 \
        | sed "s/^/$name: /"
done
[ -f "$out/train-cnn.log" ] && grep -E 'ms per iteration|accuracy' "$out/train-cnn.log" \
    | sed 's/^/train-cnn: /'
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
exit "$failed"
