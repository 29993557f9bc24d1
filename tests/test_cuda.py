"""The CUDA path, on a real GPU: skipped without one (no test pretends a CUDA device exists).

``pytest -m cuda tests/test_cuda.py`` is step 1 of benchmarks/gpu_check.sh, the prepared device check.
What it holds, and to what tolerance:

* fp32 is true fp32 on CUDA: after building a Trainer with precision=fp32, cuDNN's and cuBLAS's
  TF32 are off, matmul precision is "highest", cuDNN is deterministic and does not benchmark;
  precision=tf32 turns TF32 on, and the next fp32 Trainer turns it off again.
* Batched siblings (BatchedTrainer, vmap) follow sequential training in fp32: mean losses and every
  parameter within 1e-5 absolute after two epochs on digits (width 0.125), and within 1e-4 after one
  epoch of 1,024 MNIST images at the paper's width 1.0. TF32 convolutions (10-bit mantissa)
  would miss both by orders of magnitude.
* A run stopped after one epoch and resumed from its saved state (``Trainer.state_tensors`` through
  a safetensors file, ``load_state_tensors``) ends bitwise equal to an uninterrupted run, and two
  identical runs are bitwise equal: cuDNN determinism and the generators' states are enough.
* bf16 batched siblings run, their convolutions run in bf16, and their step stays within bf16 noise
  (15 %) of the sequential bf16 step.
* A configuration that trains on CUDA has its own group and run_key (device_type enters the hash).
* Step capture (``step_capture=1``, a CUDA graph per step) trains bitwise what eager steps train,
  in fp32 and bf16, one model or batched siblings, and across a resume; the graph is really
  replayed (its replays are counted).
* The stationarity probe's training objective draws its dropout masks on the GPU from seeded states:
  two calls give the same gradient whatever the global seeds (to 1e-4 of the masks' own spread: the
  convolutions' backward need not be bitwise repeatable), and leave the CPU's and the GPU's random
  states as they were.
"""

import math

import pytest
import torch

from weightspace.config import build_config
from weightspace.data import load_dataset
from weightspace.siblings import BatchedTrainer
from weightspace.train import Trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")]

CUDA = torch.device("cuda")
SEEDS = [(0, 0), (1, 1), (0, 2)]  # different init, and same init with a different shuffle


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=300).to(CUDA)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", train_subset=1024).to(CUDA)


def trainer(data, dataset="digits", **kw) -> Trainer:
    raw = {"dataset": dataset, "train_subset": str(len(data.y_train)), "width": "0.125", "batch_size": "128",
           "lr": "0.05", "momentum": "0.9", "weight_decay": "1e-4", "dropout": "0.5", "device": "cuda",
           "epochs": "3", **{k: str(v) for k, v in kw.items()}}
    return Trainer(build_config("single", raw), data, CUDA)


def test_fp32_is_true_fp32_and_tf32_is_an_opt_in(digits):
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    trainer(digits, precision="fp32")
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    trainer(digits, precision="tf32")
    assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is True
    trainer(digits, precision="fp32")
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False


@pytest.mark.parametrize("case", ["digits-w0.125-2ep", "mnist-w1.0-1ep"])
def test_batched_equals_sequential_fp32(case, digits, mnist):
    if case.startswith("digits"):
        data, kw, epochs, tol = digits, {}, 2, 1e-5
    else:
        data, kw, epochs, tol = (
            mnist,
            {"dataset": "mnist", "width": "1.0", "lr": "0.01", "weight_decay": "1e-5"},
            1,
            1e-4,
        )
    seq = [trainer(data, init_seed=i, shuffle_seed=s, **kw) for i, s in SEEDS]
    bat = [trainer(data, init_seed=i, shuffle_seed=s, **kw) for i, s in SEEDS]
    seq_losses = [float(t.train_epoch()) for _ in range(epochs) for t in seq]
    bt = BatchedTrainer(bat)
    bat_losses = [float(v) for _ in range(epochs) for v in bt.train_epoch()]
    assert torch.backends.cudnn.allow_tf32 is False
    assert seq_losses == pytest.approx(bat_losses, abs=tol)
    for a, b in zip(seq, bat):
        assert b.epoch == a.epoch == epochs
        assert float((a.theta() - b.theta()).abs().max()) < tol
        assert torch.equal(a.model.dropout_gen.get_state(), b.model.dropout_gen.get_state())


def test_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(digits, tmp_path):
    from safetensors.torch import load_file, save_file

    ref = trainer(digits, shuffle_seed=3)
    for _ in range(3):
        ref.train_epoch()
    again = trainer(digits, shuffle_seed=3)
    for _ in range(3):
        again.train_epoch()
    assert torch.equal(ref.theta(), again.theta())  # repeatable at all: deterministic cuDNN

    first = trainer(digits, shuffle_seed=3)
    first.train_epoch()
    save_file(first.state_tensors(), tmp_path / "state.safetensors")
    del first  # "killed": nothing of it survives but the file
    resumed = trainer(digits, shuffle_seed=3)
    resumed.load_state_tensors(load_file(tmp_path / "state.safetensors"))
    assert resumed.epoch == 1
    resumed.train_epoch()
    resumed.train_epoch()
    assert torch.equal(resumed.theta(), ref.theta())
    assert torch.equal(resumed.model.dropout_gen.get_state(), ref.model.dropout_gen.get_state())
    m_ref, m_res = ref.epoch_metrics(), resumed.epoch_metrics()
    assert m_ref == m_res


def test_bf16_batched_siblings_run(digits):
    seq = [trainer(digits, init_seed=i, shuffle_seed=s, precision="bf16") for i, s in SEEDS]
    bat = [trainer(digits, init_seed=i, shuffle_seed=s, precision="bf16") for i, s in SEEDS]
    start = [t.theta() for t in seq]
    for t in seq:
        t.train_epoch()
    bt = BatchedTrainer(bat)
    seen = []
    bt.base.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = [float(v) for v in bt.train_epoch()]
    assert all(math.isfinite(v) for v in losses)
    assert seen and set(seen) == {torch.bfloat16}
    for a, b, s in zip(seq, bat, start):
        step = a.theta() - s
        assert float(((b.theta() - s) - step).norm() / step.norm()) < 0.15


def test_cuda_configuration_has_its_own_identity():
    gpu = build_config("single", {"device": "cuda"})
    cpu = build_config("single", {"device": "cpu"})
    assert gpu.device_type == "cuda" and cpu.device_type == "cpu"
    assert gpu.group != cpu.group and gpu.run_key != cpu.run_key
    assert build_config("single", {"device": "auto"}).group == gpu.group


def _count_replays(t) -> list[int]:
    """Wrap the trainer's recorder so that the test sees how many replays ran."""
    from weightspace import capture

    n = [0]

    def recorder(step, generators, device):
        replay = capture.cuda_graph(step, generators, device)

        def counted():
            n[0] += 1
            replay()
        return counted
    t.recorder = recorder
    return n


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_steps_train_bitwise_what_eager_steps_train(digits, precision):
    eager = trainer(digits, shuffle_seed=4, precision=precision)
    graphed = trainer(digits, shuffle_seed=4, precision=precision, step_capture=1)
    replays = _count_replays(graphed)
    for _ in range(3):
        assert torch.equal(eager.train_epoch(), graphed.train_epoch())
    assert replays[0] == 3 * 2 - 3  # 300 images in batches of 128: 2 full ones an epoch, 3 warm-up steps
    assert torch.equal(eager.theta(), graphed.theta())
    assert torch.equal(eager.model.dropout_gen.get_state(), graphed.model.dropout_gen.get_state())
    assert eager.epoch_metrics() == graphed.epoch_metrics()


def test_captured_batched_siblings_train_bitwise_what_eager_batched_siblings_train(digits):
    eager = BatchedTrainer([trainer(digits, init_seed=i, shuffle_seed=s) for i, s in SEEDS])
    graphed_ts = [trainer(digits, init_seed=i, shuffle_seed=s, step_capture=1) for i, s in SEEDS]
    replays = _count_replays(graphed_ts[0])
    for t in graphed_ts[1:]:
        t.recorder = graphed_ts[0].recorder
    graphed = BatchedTrainer(graphed_ts)
    for _ in range(5):
        assert all(torch.equal(a, b) for a, b in zip(eager.train_epoch(), graphed.train_epoch()))
    assert replays[0] == 0  # 2 full batches an epoch, 3 warm-up steps: nothing left to replay
    eager.batch_size = graphed.batch_size = 32  # 9 full batches an epoch: 6 replays each
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(eager.train_epoch(), graphed.train_epoch()))
    assert replays[0] == 12
    for a, b in zip(eager.trainers, graphed.trainers):
        assert torch.equal(a.theta(), b.theta())


def test_a_captured_run_resumed_is_bitwise_equal_to_an_uninterrupted_eager_one(digits, tmp_path):
    from safetensors.torch import load_file, save_file

    ref = trainer(digits, shuffle_seed=6, batch_size=32)
    for _ in range(3):
        ref.train_epoch()
    first = trainer(digits, shuffle_seed=6, batch_size=32, step_capture=1)
    first.train_epoch()
    save_file(first.state_tensors(), tmp_path / "state.safetensors")
    del first
    resumed = trainer(digits, shuffle_seed=6, batch_size=32, step_capture=1)
    resumed.load_state_tensors(load_file(tmp_path / "state.safetensors"))
    resumed.train_epoch()
    resumed.train_epoch()
    assert torch.equal(resumed.theta(), ref.theta())


def test_the_training_objectives_masks_are_seeded_on_the_gpu(digits):
    from weightspace.analysis.derivatives import halves
    from weightspace.analysis.flatmodel import FlatModel
    from weightspace.analysis.probes.gradients import train_objective
    from weightspace.model import build_model, flat_params

    fm = FlatModel(0.125, 0.5, CUDA)
    x, y = digits.x_train[:60], digits.y_train[:60]
    pieces = [(fm.loss_pieces(x[h], y[h]), len(h)) for h in halves(60, 2)]
    th = fm.theta(flat_params(build_model(0.125, 0.5, 0)))
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
        out.append(train_objective(fm, pieces, th, 1000))
        assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), gpu)
    assert out[0].mask_floor > 0 and float((out[0].ce - out[1].ce).norm()) < 1e-4 * out[0].mask_floor
