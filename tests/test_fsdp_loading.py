"""Loading under FSDP reads each rank's part only (``engine.distributed.DeferredBase``): the method is applied to a
stand-in base and draws what it draws in one process; the sharded model's local shards equal those of the old path
(load the whole model, apply the method, shard it), bit for bit; and a rank's peak host memory while loading is
about its part of the model plus one checkpoint shard (measured)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from method_cases import CASES
from t5peft import apply_method, load_pretrained
from t5peft.engine.distributed import SHARDED_LOAD_METHODS, DeferredBase


def _initial_values(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    state = {name: params[name].detach().clone() for name in names}
    state.update({f"buffer {name}": b.clone() for name, b in model.named_buffers()})
    return state


def _stand_in_values(base_dir, method: str, options: dict) -> dict[str, torch.Tensor] | None:
    """What the method draws on a stand-in base (None when it cannot be applied there)."""
    model, deferred = DeferredBase.build(str(base_dir))
    torch.manual_seed(0)
    try:
        apply_method(model, method, **options)
    except RuntimeError:
        return None
    added = list(model.peft.added)
    deferred.release(model, torch.device("cpu"))
    assert set(deferred.kept) == set(added), "the stand-in path keeps exactly the method's parameters"
    state = {name: deferred.kept[name] for name in added}
    state.update({f"buffer {name}": b for name, b in model.named_buffers()})
    return state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None) -> bool:
    return b is not None and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_method_draws_on_a_stand_in_base_what_it_draws_on_the_loaded_one(case, method_base_dir):
    """Every case of a method in SHARDED_LOAD_METHODS: the same parameters and buffers, bit for bit; a method left
    out reads base values at initialisation, which at least one of its cases shows (so the set is not too small)."""
    method, options = CASES[case]
    base_dir = method_base_dir(method)
    model = load_pretrained(base_dir)
    torch.manual_seed(0)
    apply_method(model, method, **options)
    loaded = _initial_values(model, list(model.peft.added))
    stand_in = _stand_in_values(base_dir, method, options)
    if method in SHARDED_LOAD_METHODS:
        assert _same(loaded, stand_in), case
    else:
        assert not _same(loaded, stand_in), f"{case}: draws the same on a stand-in base; add {method} to the set"


# ---------------------------------------------------------------------------------------------------------
# Two ranks: the local shards of the old path


LAUNCH_TIMEOUT = 120  # seconds: a hung rank fails the test instead of hanging the suite
# the cases compared on two ranks: full fine-tuning, LoRA, and methods that add buffers (AdaLoRA's rank masks,
# VeRA's shared projections), and IA3's vectors
TWO_RANK_CASES = ("full", "lora", "adalora", "vera", "ia3")


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def sharded_uneven(request, tmp_path_factory) -> Path:
    """A tiny T5 in several shards whose vocabulary (999 rows) and relative position table (33 buckets) do not
    divide over two ranks (the second rank's chunks are shorter, FSDP pads them); the head tied to the embedding
    (t5-small) or not (v1.1)."""
    from helpers import save_tiny_base

    whole = save_tiny_base(
        tmp_path_factory.mktemp("whole"),
        vocab_size=999,
        relative_attention_num_buckets=33,
        tie_word_embeddings=request.param,
    )
    folder = tmp_path_factory.mktemp("sharded")
    load_pretrained(whole).save_pretrained(folder, max_shard_bytes=300_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 3
    return folder


def _local_state(model: torch.nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """Each parameter's placements and this rank's local tensor, each buffer's value."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, param in model.named_parameters():
        if isinstance(param, DTensor):
            state[name] = (str(param.placements), param.to_local().detach().clone())
        else:
            state[name] = ("whole", param.detach().clone())
    state.update({f"buffer {name}": ("buffer", b.clone()) for name, b in model.named_buffers()})
    return state


def _differences(old: torch.nn.Module, new: torch.nn.Module) -> list[str]:
    a, b = _local_state(old), _local_state(new)
    if list(a) != list(b):
        return [f"names differ: {sorted(set(a) ^ set(b))}"]
    problems = [name for name in a if a[name][0] != b[name][0] or not torch.equal(a[name][1], b[name][1])]
    if (old.lm_head.weight is old.shared.weight) != (new.lm_head.weight is new.shared.weight):
        problems.append("lm_head.weight tied in one model only")
    return problems


def _compare_rank(rank: int, store: str, base_dir: str, queue) -> None:
    """On each rank: for every case, the old path and the deferred one, sharded; their local shards, their buffers
    and their logits on one batch (FSDP gathers the blocks) must be equal."""
    from helpers import random_batch
    from method_cases import CASES
    from t5peft.engine.distributed import Distribution

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    dist = Distribution(world_size=2, rank=rank, strategy="fsdp", backend="gloo")
    report: dict[str, list[str]] = {}
    try:
        for case in TWO_RANK_CASES:
            method, options = CASES[case]
            old = load_pretrained(base_dir)
            torch.manual_seed(0)
            apply_method(old, method, **options)
            dist.wrap(old.to(cpu), cpu)
            new, deferred = DeferredBase.build(base_dir)
            torch.manual_seed(0)
            apply_method(new, method, **options)
            deferred.release(new, cpu)
            dist.wrap(new, cpu, deferred=deferred)
            problems = _differences(old, new)
            batch = random_batch(1, vocab=999)
            if not torch.equal(old(**batch).logits, new(**batch).logits):
                problems.append("logits differ")
            report[case] = problems
    except Exception as err:  # reported, so that the test names it
        report["error"] = [repr(err)]
    finally:
        queue.put((rank, report))
        torch.distributed.destroy_process_group()


def test_two_ranks_hold_the_shards_of_the_old_path(sharded_uneven, tmp_path):
    """FSDP on two ranks (gloo) from a sharded checkpoint: every rank's local shard of every parameter (base and
    method's), every buffer, the tie of the head and the logits equal those of loading the whole model, applying the
    method and sharding it, bit for bit."""
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (str(tmp_path / "store"), str(sharded_uneven), queue)
    workers = [context.Process(target=_compare_rank, args=(rank, *args)) for rank in range(2)]
    for worker in workers:
        worker.start()
    reports = dict(queue.get(timeout=LAUNCH_TIMEOUT) for _ in workers)
    for worker in workers:
        worker.join(timeout=LAUNCH_TIMEOUT)
    assert reports == {rank: {case: [] for case in TWO_RANK_CASES} for rank in range(2)}
    assert all(worker.exitcode == 0 for worker in workers)
