"""Checkpointer: exact round trips, save cadence and retention, async saves, resharding on restore,
uncommitted directories ignored, and clear errors."""

import glob
import logging
import os
import shutil
import subprocess

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from memagent_jax.model import sharding as sh
from memagent_jax.model.config import get_preset
from memagent_jax.model.transformer import Transformer
from memagent_jax.run import configuration
from memagent_jax.run.checkpoint import Checkpointer, CheckpointError, Restored, abstract_like

RULES = sh.DEFAULT_RULES
TX = optax.adamw(1e-2)


def _train_state(params):
    """params and adamw state after one update, so mu, nu and count are all non-trivial."""

    @jax.jit
    def step(params):
        opt_state = TX.init(params)
        grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1 + 0.01, params)
        updates, opt_state = TX.update(grads, opt_state, params)
        return {"params": optax.apply_updates(params, updates), "opt_state": opt_state}

    return step(params)


def _params(mesh=None, vocab_size=None):
    overrides = {} if vocab_size is None else {"vocab_size": vocab_size}
    cfg = get_preset("tiny", **overrides)
    build = lambda: Transformer(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    model = build() if mesh is None else sh.create_sharded(build, mesh, RULES)
    return nnx.state(model, nnx.Param)


def _config():
    cfg = ml_collections.ConfigDict()
    cfg.model = configuration.model_section("tiny")
    cfg.sharding = configuration.sharding_section()
    cfg.lr = 1e-5
    cfg.run_name = "ckpt-test"
    return cfg.to_dict()


# An interleave-style Grain state: int dict keys, plus bytes and tuples, must come back exactly.
DATA_STATE = {
    "next_index_in_cycle": 1,
    "iterators_in_use_states": [{"next_index": 3}, None],
    "future_states": {4: {"next_index": 0}, 7: {"next_index": 2}},
    "blob": b"\x00\xffgrain",
    "shape": (2, 3),
    "__tuple__": "a key that looks like a tag",
    "odd": {"__bytes__": "a one-key dict that looks like a tagged value"},
}


def _assert_same_tree(restored, original, *, shardings=True):
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(original), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if shardings:
            assert a.sharding == b.sharding


@pytest.fixture(scope="module")
def state():
    return _train_state(_params())


@pytest.mark.parametrize("key_kind", ["raw", "typed"])
def test_round_trip_is_exact(tmp_path, state, key_kind):
    rng = jax.random.PRNGKey(7) if key_kind == "raw" else jax.random.key(7, impl="rbg")
    full = dict(state, step_key=jax.random.key(3), ema_decay=0.99, counts=np.arange(5, dtype=np.int64),
                tokens_seen=np.int64(2**40))
    config = _config()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.save(12, full, rng=rng, data_state=DATA_STATE, config=config, metadata={"loss": 1.25})
        assert ckpt.latest_step() == 12 and ckpt.all_steps() == [12]
        restored = ckpt.restore(abstract_like(full))
    assert isinstance(restored, Restored) and restored.step == 12
    assert isinstance(restored.state["params"], nnx.State)
    assert isinstance(restored.state["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(restored.state["opt_state"][1], optax.EmptyState)
    assert int(restored.state["opt_state"][0].count) == 1
    _assert_same_tree(restored.state["params"], full["params"])
    _assert_same_tree(restored.state["opt_state"], full["opt_state"])
    _assert_same_tree(restored.state["step_key"], full["step_key"])
    assert restored.state["ema_decay"] == 0.99 and type(restored.state["ema_decay"]) is float
    assert isinstance(restored.state["counts"], np.ndarray) and restored.state["counts"].dtype == np.int64
    np.testing.assert_array_equal(restored.state["counts"], np.arange(5))
    assert restored.state["tokens_seen"] == 2**40 and type(restored.state["tokens_seen"]) is np.int64
    # The key comes back as the same kind of key: raw uint32 data or a typed key of the same impl.
    assert restored.rng.dtype == rng.dtype and restored.rng.shape == rng.shape
    if key_kind == "typed":
        assert jax.random.key_impl(restored.rng) == jax.random.key_impl(rng)
        np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(rng))
    else:
        np.testing.assert_array_equal(restored.rng, rng)
    np.testing.assert_array_equal(
        jax.random.key_data(jax.random.fold_in(restored.rng, 1)) if key_kind == "typed"
        else jax.random.fold_in(restored.rng, 1),
        jax.random.key_data(jax.random.fold_in(rng, 1)) if key_kind == "typed" else jax.random.fold_in(rng, 1),
    )
    assert restored.data_state == DATA_STATE
    assert restored.config == config and restored.config["sharding"]["rules"] == tuple(tuple(r) for r in RULES)
    assert restored.metadata == {"loss": 1.25}


def test_nnx_state_and_pure_dict_restore_into_each_other(tmp_path, state):
    pure = {"params": nnx.to_pure_dict(state["params"])}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, {"params": state["params"]}, rng=jax.random.PRNGKey(0), data_state=None, config={})
        ckpt.save(2, pure, rng=jax.random.PRNGKey(0), data_state=None, config={})
        as_pure = ckpt.restore(abstract_like(pure), step=1)
        as_state = ckpt.restore(abstract_like({"params": state["params"]}), step=2)
    _assert_same_tree(as_pure.state, pure)
    _assert_same_tree(as_state.state, {"params": state["params"]})
    assert as_pure.data_state is None and as_pure.metadata == {}


def test_grain_iterator_resumes_from_saved_state(tmp_path):
    def make():
        ds = grain.MapDataset.range(40).shuffle(seed=5).batch(4, batch_fn=list)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))

    it = make()
    for _ in range(3):
        next(it)
    saved_state = it.get_state()
    expected = [next(it) for _ in range(3)]
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, {"w": jnp.ones(2)}, rng=jax.random.PRNGKey(0), data_state=saved_state, config={})
        restored = ckpt.restore({"w": jnp.zeros(2)})
    assert restored.data_state == saved_state
    resumed = make()
    resumed.set_state(restored.data_state)
    assert [next(resumed) for _ in range(3)] == expected


def test_save_every_and_keep_last(tmp_path):
    tree = {"w": jnp.arange(4.0)}
    with Checkpointer(tmp_path, save_every=2, keep=2, async_save=False) as ckpt:
        assert [ckpt.should_save(s) for s in range(5)] == [True, False, True, False, True]
        saved = [ckpt.save(s, {"w": tree["w"] + s}, rng=jax.random.PRNGKey(s), data_state={"s": s}, config={})
                 for s in range(1, 10)]
        assert saved == [s % 2 == 0 for s in range(1, 10)]
        assert ckpt.all_steps() == [6, 8]
        assert sorted(os.listdir(tmp_path)) == ["6", "8"]
        assert ckpt.save(9, tree, rng=jax.random.PRNGKey(0), data_state=None, config={}, force=True)
        assert ckpt.all_steps() == [8, 9] and sorted(os.listdir(tmp_path)) == ["8", "9"]
        # The same step again is skipped; an older step than the latest is refused.
        assert not ckpt.save(9, tree, rng=jax.random.PRNGKey(0), data_state=None, config={}, force=True)
        with pytest.raises(CheckpointError, match="later step 9"):
            ckpt.save(4, tree, rng=jax.random.PRNGKey(0), data_state=None, config={})
        r = ckpt.restore(abstract_like(tree), step=8)
    np.testing.assert_array_equal(r.state["w"], np.arange(4.0) + 8)
    assert r.data_state == {"s": 8}


def test_async_save_copies_arrays_then_commits_on_wait(tmp_path, state):
    expected = jax.tree.map(np.asarray, state)
    target = abstract_like(state)
    work = jax.tree.map(lambda x: x + 0, state)  # arrays owned by this test, deleted below
    with Checkpointer(tmp_path, keep=1, async_save=True) as ckpt:
        assert ckpt.save(5, work, rng=jax.random.PRNGKey(1), data_state={"i": 5}, config={"a": 1})
        # The save has its own copy: the device buffers may go away while it is still writing.
        for leaf in jax.tree.leaves(work):
            leaf.delete()
        assert ckpt.latest_step() in (None, 5)  # in flight or committed, never partially visible
        ckpt.wait()
        assert ckpt.latest_step() == 5
        assert sorted(os.listdir(tmp_path)) == ["5"]
        restored = ckpt.restore(target)
        assert ckpt.save(10, state, rng=jax.random.PRNGKey(2), data_state=None, config={})
    # close() waited for the second save and kept only the last one.
    assert sorted(os.listdir(tmp_path)) == ["10"]
    _assert_same_tree(jax.tree.map(np.asarray, restored.state), expected, shardings=False)
    assert restored.data_state == {"i": 5} and restored.config == {"a": 1}


def _target_on(state, mesh):
    """ShapeDtypeStructs for a train state on `mesh`: params by the sharding rules, each optimizer
    moment like its parameter, everything else replicated."""
    param_shardings = {
        jax.tree_util.keystr(path): s
        for path, s in jax.tree_util.tree_flatten_with_path(sh.state_shardings(state["params"], mesh, RULES))[0]
    }

    def one(path, x):
        key = jax.tree_util.keystr(path)
        found = [s for k, s in param_shardings.items() if key.endswith(k)]
        sharding = found[0] if found else NamedSharding(mesh, P())
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(one, state)


def test_restore_onto_a_different_mesh(tmp_path):
    fsdp = sh.make_mesh({"fsdp": 8})
    state = _train_state(_params(fsdp))
    # Saved from arrays split 8 ways over fsdp: the parameters and the adamw moments alike.
    for saved in (state["params"]["embed_tokens"], state["opt_state"][0].mu["embed_tokens"]):
        assert saved.get_value().sharding == NamedSharding(fsdp, P(None, "fsdp"))
        assert saved.get_value().addressable_shards[0].data.shape == (1024, 128 // 8)
    expected = jax.tree.map(np.asarray, state)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(3, state, rng=jax.random.key(9), data_state=None, config={})
        ckpt.wait()

    mesh2 = sh.make_mesh({"data": 2, "tensor": 4})
    target = _target_on(state, mesh2)
    one_device = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SingleDeviceSharding(jax.devices()[5])), state
    )
    with Checkpointer(tmp_path) as reader:
        on_mesh2 = reader.restore(target)
        on_device5 = reader.restore(one_device)
    for restored, tmpl in ((on_mesh2, target), (on_device5, one_device)):
        assert jax.tree.structure(restored.state) == jax.tree.structure(state)
        for got, want, exp in zip(jax.tree.leaves(restored.state), jax.tree.leaves(tmpl), jax.tree.leaves(expected),
                                  strict=True):
            assert got.sharding == want.sharding
            np.testing.assert_array_equal(np.asarray(got), exp)
    q = on_mesh2.state["params"]["layers"][0]["mlp"]["up_proj"].get_value()
    assert q.sharding.spec == P(None, "tensor") and q.addressable_shards[0].data.shape == (128, 384 // 4)
    assert on_mesh2.rng.sharding == NamedSharding(mesh2, P())
    assert on_device5.rng.sharding == SingleDeviceSharding(jax.local_devices()[0])
    np.testing.assert_array_equal(jax.random.key_data(on_mesh2.rng), jax.random.key_data(jax.random.key(9)))


def test_uncommitted_directories_are_ignored(tmp_path):
    tree = {"w": jnp.arange(6.0)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, tree, rng=jax.random.PRNGKey(0), data_state={"at": 5}, config={})
    assert "commit_success.txt" in os.listdir(tmp_path / "5")
    # A save killed before its rename, and a later step copied without its commit marker.
    shutil.copytree(tmp_path / "5", tmp_path / "7.orbax-checkpoint-tmp")
    shutil.copytree(tmp_path / "5", tmp_path / "9")
    os.remove(tmp_path / "9" / "commit_success.txt")
    (tmp_path / "11").mkdir()

    ckpt = Checkpointer(tmp_path, async_save=False)
    assert ckpt.all_steps() == [5] and ckpt.latest_step() == 5
    r = ckpt.restore(abstract_like(tree))
    assert r.step == 5 and r.data_state == {"at": 5}
    for step in (7, 9, 11):
        with pytest.raises(CheckpointError, match=f"no committed checkpoint for step {step}"):
            ckpt.restore(abstract_like(tree), step=step)
    assert (tmp_path / "7.orbax-checkpoint-tmp").exists()  # readers delete nothing
    ckpt.save(12, tree, rng=jax.random.PRNGKey(0), data_state=None, config={})
    ckpt.close()
    assert not (tmp_path / "7.orbax-checkpoint-tmp").exists()  # the first save cleans up leftovers
    assert Checkpointer(tmp_path).all_steps() == [5, 12]


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    ckpt = Checkpointer(missing)
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(CheckpointError, match=f"{missing}.*does not exist"):
        ckpt.restore({"w": jnp.zeros(2)})
    assert not missing.exists()  # looking does not create it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"{empty}.*no committed checkpoint"):
        Checkpointer(empty).restore({"w": jnp.zeros(2)})


def test_mismatched_target_names_the_differences(tmp_path, state):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, rng=jax.random.PRNGKey(0), data_state=None, config={})
        target = abstract_like(state)
        with pytest.raises(CheckpointError, match=r"missing from the target: opt_state/0/count, opt_state/0/mu/"):
            ckpt.restore({"params": target["params"]})
        with pytest.raises(CheckpointError, match=r"not in the checkpoint: extra"):
            ckpt.restore(dict(target, extra=jax.ShapeDtypeStruct((2,), jnp.float32)))
        other = abstract_like(_train_state(_params(vocab_size=512)))
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(other)
        message = str(info.value)
        assert "params/embed_tokens: checkpoint float32[1024, 128], target float32[512, 128]" in message
        assert "opt_state/0/mu/embed_tokens" in message and str(tmp_path) in message
        with pytest.raises(CheckpointError, match=r"params/norm/weight: checkpoint float32\[128\], target bfloat16"):
            ckpt.restore(jax.tree_util.tree_map_with_path(
                lambda p, x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if "norm']['weight" in
                                                  jax.tree_util.keystr(p) and "layers" not in jax.tree_util.keystr(p)
                                                  else x.dtype, sharding=x.sharding), target))


def test_unsavable_values_fail_before_writing(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(CheckpointError, match=r"data_state\['it'\]: set is not JSON-able"):
            ckpt.save(1, {"w": jnp.ones(2)}, rng=jax.random.PRNGKey(0), data_state={"it": {1}}, config={})
        with pytest.raises(CheckpointError, match="state 'name': cannot checkpoint a leaf of type str"):
            ckpt.save(1, {"w": jnp.ones(2), "name": "x"}, rng=jax.random.PRNGKey(0), data_state=None, config={})
        assert ckpt.all_steps() == [] and os.listdir(tmp_path) == []


# -- damaged checkpoints and failed writes -------------------------------------------------------------------

def _two_steps(directory):
    state = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}
    with Checkpointer(directory, keep=3, async_save=True) as ckpt:
        for step in (1, 2):
            scaled = jax.tree.map(lambda x, step=step: x * step, state)
            ckpt.save(step, scaled, rng=jax.random.key(step), data_state={"at": step}, config={})
    return state


def _largest_chunk(step_dir):
    return max(glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True), key=os.path.getsize)


def _truncate_chunk(step_dir):
    with open(_largest_chunk(step_dir), "r+b") as file:
        file.truncate(50)


def _flip_bytes(step_dir):
    path = _largest_chunk(step_dir)
    data = bytearray(open(path, "rb").read())
    data[200] ^= 0xFF  # an uncompressed float: Orbax reads it back without complaint
    open(path, "wb").write(bytes(data))


def _cut_json(step_dir):
    path = step_dir / "manifest" / "metadata"
    path.write_text(path.read_text()[:40])


@pytest.mark.parametrize("damage", [_truncate_chunk, _flip_bytes, _cut_json,
                                    lambda d: shutil.rmtree(d / "state"),
                                    lambda d: os.remove(d / "state" / "manifest.ocdbt")],
                         ids=["truncated-chunk", "flipped-bytes", "cut-json", "missing-item", "missing-index"])
def test_a_damaged_latest_step_is_named_set_aside_and_the_previous_one_restored(tmp_path, caplog, damage):
    state = _two_steps(tmp_path / "ck")
    damage(tmp_path / "ck" / "2")
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path / "ck") as ckpt:
        restored = ckpt.restore(state)
        assert restored.step == 1 and restored.data_state == {"at": 1}
        np.testing.assert_array_equal(restored.state["w"], np.arange(1000.0))
        assert ckpt.all_steps() == [1]  # set aside: the resumed run can save step 2 again
    assert f"checkpoint step 2 in {tmp_path / 'ck' / '2'} is damaged" in caplog.text
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1", "2.damaged"]
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(2, state, rng=jax.random.key(0), data_state=None, config={})
    assert Checkpointer(tmp_path / "ck").restore(state).step == 2


def test_no_intact_step_is_one_error_naming_each(tmp_path):
    state = _two_steps(tmp_path / "ck")
    for step in ("1", "2"):
        _truncate_chunk(tmp_path / "ck" / step)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*ck: step 2: .*; step 1: .*Delete the folder"):
        Checkpointer(tmp_path / "ck").restore(state)


def test_a_mismatched_target_is_an_error_not_damage(tmp_path):
    _two_steps(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not match checkpoint step 2"):
        Checkpointer(tmp_path / "ck").restore({"w": jnp.zeros(5), "b": jnp.ones(3)})


def test_a_save_killed_before_its_commit_is_not_listed(tmp_path):
    state = _two_steps(tmp_path / "ck")
    (tmp_path / "ck" / "3.orbax-checkpoint-tmp").mkdir()  # what SIGKILL during a save leaves
    with Checkpointer(tmp_path / "ck") as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.restore(state).step == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root to mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("async_save", [True, False])
def test_a_full_disk_is_one_clear_error_and_the_last_step_stays(tiny_disk, async_save):
    small = {"w": jnp.ones(10)}
    ckpt = Checkpointer(tiny_disk / "ck", async_save=async_save)
    ckpt.save(1, small, rng=jax.random.key(0), data_state=None, config={})
    big = {"w": jax.random.normal(jax.random.key(1), (1_000_000,))}  # 4 MB of incompressible floats
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step 2 in .*\(disk full or not writable\?\).*"
                                               r"No space left on device.*the last committed step, 1, is untouched"):
        ckpt.save(2, big, rng=jax.random.key(0), data_state=None, config={})
        ckpt.wait()
    ckpt.close()
    assert Checkpointer(tiny_disk / "ck").restore(small).step == 1


def test_a_read_only_disk_is_one_clear_error(tiny_disk):
    small = {"w": jnp.ones(10)}
    with Checkpointer(tiny_disk / "ck", async_save=False) as ckpt:
        ckpt.save(1, small, rng=jax.random.key(0), data_state=None, config={})
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    ckpt = Checkpointer(tiny_disk / "ck", async_save=True)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step 2 .*(Read-only|READ_ONLY|read-only).*"
                                               r"step, 1, is untouched"):
        ckpt.save(2, small, rng=jax.random.key(0), data_state=None, config={})
        ckpt.wait()
    assert Checkpointer(tiny_disk / "ck").restore(small).step == 1
