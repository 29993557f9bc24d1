"""Step capture (``step_capture=1``): what can be decided without a GPU.

The CUDA graph itself only exists on a GPU (tests/test_cuda.py checks replay == eager there).
Here the recorder is ``capture.eager_stand_in``, whose "replay" runs the recorded step again:
that checks StepGraph's bookkeeping (the static index buffer, the eager warm-up steps, the
eager last batch, the graph dropped on resume and reseed) by the trajectory it must leave,
bit for bit the one of plain eager training. Nothing here pretends a CUDA device exists.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightspace import capture
from weightspace.config import ParamError, TrainConfig, build_config
from weightspace.data import load_dataset
from weightspace.siblings import BatchedTrainer
from weightspace.train import Trainer

CPU = torch.device("cpu")
SEEDS = [(0, 0), (1, 1), (0, 2)]


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", train_subset=300)  # batch 64: 4 full batches and one of 44


class Counting:
    """The eager stand-in, counting recordings and replays."""

    def __init__(self):
        self.recorded = self.replays = 0

    def __call__(self, step, generators, device):
        self.recorded += 1
        self.generators = list(generators)

        def replay():
            self.replays += 1
            step()
        return replay


def trainer(data, init_seed=0, shuffle_seed=0, recorder=None, **kw) -> Trainer:
    cfg = TrainConfig(
        dataset="digits",
        train_subset=300,
        width=0.125,
        dropout=0.5,
        momentum=0.9,
        weight_decay=1e-4,
        lr=0.05,
        batch_size=64,
        init_seed=init_seed,
        shuffle_seed=shuffle_seed,
        **kw,
    )
    t = Trainer(cfg, data, CPU)
    t.recorder = recorder  # what step_capture=1 sets on CUDA (capture.cuda_graph)
    return t


def same_state(a: Trainer, b: Trainer) -> None:
    assert torch.equal(a.theta(), b.theta())
    assert torch.equal(a.model.dropout_gen.get_state(), b.model.dropout_gen.get_state())
    assert torch.equal(a.order_gen.get_state(), b.order_gen.get_state())
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(a.opt.state[pa]["momentum_buffer"], b.opt.state[pb]["momentum_buffer"])


def test_replayed_steps_train_bitwise_what_eager_steps_train(data):
    rec = Counting()
    eager, replayed = trainer(data), trainer(data, recorder=rec)
    for _ in range(3):
        assert torch.equal(eager.train_epoch(), replayed.train_epoch())
    same_state(eager, replayed)
    # one recording; 3 epochs x 4 full batches, less the 3 warm-up steps, replayed; the short batches eager
    assert rec.recorded == 1 and rec.replays == 3 * 4 - capture.WARMUP
    assert rec.generators == [replayed.model.dropout_gen]


def test_a_resumed_or_reseeded_trainer_records_its_step_again(data, tmp_path):
    rec = Counting()
    ref = trainer(data, shuffle_seed=5)
    for _ in range(3):
        ref.train_epoch()
    first = trainer(data, shuffle_seed=5, recorder=rec)
    first.train_epoch()
    save_file(first.state_tensors(), tmp_path / "state.safetensors")
    first.load_state_tensors(load_file(tmp_path / "state.safetensors"))  # new momentum buffers, new generator
    assert first.graph is None
    first.train_epoch()
    first.train_epoch()
    same_state(ref, first)
    assert rec.recorded == 2 and rec.generators == [first.model.dropout_gen]

    first.reseed(9)
    assert first.graph is None


def test_batched_siblings_replay_bitwise_what_they_train_eagerly(data):
    rec = Counting()
    eager = BatchedTrainer([trainer(data, i, s) for i, s in SEEDS])
    replayed = BatchedTrainer([trainer(data, i, s, recorder=rec) for i, s in SEEDS])
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(eager.train_epoch(), replayed.train_epoch()))
    for a, b in zip(eager.trainers, replayed.trainers):
        same_state(a, b)
    # recorded anew each epoch (new stacked parameters), with every sibling's dropout generator
    assert rec.recorded == 2 and rec.replays == 2 * (4 - capture.WARMUP)
    assert rec.generators == [t.model.dropout_gen for t in replayed.trainers]


def test_siblings_must_agree_on_step_capture(data):
    with pytest.raises(ValueError, match="step_capture"):
        BatchedTrainer([trainer(data, 0, 0), trainer(data, 1, 1, recorder=capture.eager_stand_in)])


def test_step_graph_copies_each_batch_into_its_buffer_and_warms_up_eagerly():
    seen, index = [], torch.zeros(2, dtype=torch.int64)
    g = capture.StepGraph(lambda: seen.append(index.tolist()), index, [], CPU, warmup=2,
                          recorder=capture.eager_stand_in)
    for k in range(5):
        g(torch.tensor([k, k + 10]))
        assert (g.replay is None) == (k < 2)
    assert seen == [[k, k + 10] for k in range(5)] and g.eager_steps == 2


def test_step_capture_needs_cuda():
    cfg = build_config("single", {"dataset": "digits", "step_capture": "1", "device": "cpu"})
    with pytest.raises(ParamError) as e:
        Trainer(cfg, load_dataset("digits", train_subset=64), CPU)
    msg = str(e.value)
    assert (
        "\n" not in msg
        and msg.startswith("parameter 'step_capture':")
        and "CUDA device" in msg
        and "use 0" in msg
    )
    assert Trainer(build_config("single", {"dataset": "digits", "step_capture": "0"}), load_dataset(
        "digits", train_subset=64), CPU).recorder is None


def test_step_capture_enters_the_identity_only_when_on():
    off, on = build_config("single", {}), build_config("single", {"step_capture": "1"})
    assert off.group == build_config("single", {"step_capture": "0"}).group
    assert on.group != off.group and on.run_key != off.run_key
    assert "step_capture" not in off.identity_fields(with_seeds=True)
