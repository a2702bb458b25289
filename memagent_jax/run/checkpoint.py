"""Training checkpoints: parameters, optimizer state, step, RNG key, data-iterator state and config.

One ``Checkpointer`` manages a directory of numbered steps through ``orbax.checkpoint.CheckpointManager``::

    ckpt = Checkpointer(run_dir / "checkpoints", save_every=100, keep=3)
    if ckpt.latest_step() is not None:
        r = ckpt.restore(abstract_like(state))          # or a ShapeDtypeStruct tree on another mesh
        state, rng, step = r.state, r.rng, r.step
        it.set_state(r.data_state)
    for step in range(step + 1, num_steps + 1):
        ...
        ckpt.save(step, state, rng=rng, data_state=it.get_state(), config=cfg.to_dict())
    ckpt.close()

A step directory ``<dir>/<step>/`` holds six Orbax items:

* ``state``: the array pytree (``StandardSave``), stored as a nested dict keyed by the pytree's path
  strings (``params/layers/0/mlp/up_proj``, ``opt_state/0/mu/...``, ``opt_state/0/count``). Orbax
  0.12.8 does round-trip ``nnx.State`` and optax states itself when given a matching target, but the
  canonical dict keeps the on-disk layout independent of container classes (``nnx.State``,
  ``nnx.Variable``, optax NamedTuples, ``optax.EmptyState``, which holds nothing and so stores
  nothing): the structure comes back from the restore *target*, whose treedef (Variable metadata such
  as logical axes included) is reused as is, the paths can be checked against a manifest to name what
  differs, typed PRNG keys inside the state can be stored as key data, and, as ``nnx.Variable``
  wrappers add no path entry, a state saved from an ``nnx.State`` restores into its
  ``nnx.to_pure_dict`` form and the other way round.
* ``rng``: the RNG key's raw data (``jax.random.key_data``) for typed keys, or the raw uint32 key.
* ``manifest``: JSON: every array's path, shape, dtype and, for typed keys, the key implementation;
  restore checks the target against it and names what differs.
* ``data_state``, ``config``, ``metadata``: JSON (``JsonSave``). Values JSON cannot hold exactly are
  tagged: ``bytes`` as ``{"__bytes__": base64}``, tuples as ``{"__tuple__": [...]}``, dicts with
  non-string keys (Grain's interleave state has ``future_states: dict[int, ...]``) as
  ``{"__dict__": [[key, value], ...]}``. NumPy scalars become Python numbers.

Commit protocol (orbax-checkpoint 0.12.8 on a POSIX filesystem): a save writes into
``<step>.orbax-checkpoint-tmp``, writes ``commit_success.txt`` into it and renames it to ``<step>``.
Listing here counts a step only if its directory has the final name *and* holds ``commit_success.txt``
(``AtomicityMode.COMMIT_FILE`` validation), so neither a leftover tmp directory nor a step directory
left by an interrupted copy is ever returned. ``latest_step``/``all_steps`` read the disk, so an
asynchronous save in flight is not listed until it has committed (Orbax's own ``latest_step`` lists it
at once). Leftover tmp directories are deleted when this object first saves (not before: a reader
opening a directory a trainer is writing to must not delete the trainer's save in progress).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from memagent_jax.run.fingerprint import fingerprints

__all__ = ["CheckpointError", "Checkpointer", "DamagedCheckpoint", "Restored", "abstract_like"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_JSON_ITEMS = ("manifest", "data_state", "config", "metadata")
_ARRAY_ITEMS = ("state", "rng")
_COMMIT_FILE = "commit_success.txt"  # what orbax 0.12.8 writes before the final rename
_MAX_LISTED = 8  # differences named in a structure-mismatch error


class CheckpointError(Exception):
    """No usable checkpoint, a target that does not match the checkpoint, or an unsavable value."""


class DamagedCheckpoint(CheckpointError):
    """A committed step whose files cannot be read back as written (truncated, missing or corrupted)."""


# What a damaged step raises from inside Orbax: TensorStore's read errors are ValueErrors ("OUT_OF_RANGE:
# ...", "NOT_FOUND: ...", sometimes wrapped in a bare Exception by Orbax), a truncated JSON item a
# JSONDecodeError (a ValueError), a missing item a KeyError, an unreadable file an OSError.
_READ_ERRORS = (ValueError, KeyError, OSError)


def _short(error: BaseException) -> str:
    """The first line of a (TensorStore: very long) error; its end is kept, as it names the OS error."""
    line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return line if len(line) <= 400 else f"{line[:200]} ... {line[-200:]}"


def _is_read_error(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, _READ_ERRORS):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    rng: jax.Array
    data_state: dict | None
    config: dict
    metadata: dict


# ----------------------------------------------------------------------------------------------------
# JSON values: exact round trip for bytes, tuples and non-string dict keys.

_TAGS = ("__bytes__", "__tuple__", "__dict__")


def _to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic) or (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0):
        return _to_json(value.item(), where)
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        plain = all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS)
        if plain:
            return {k: _to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__dict__": [[_to_json(k, f"{where} key {k!r}"), _to_json(v, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    raise CheckpointError(
        f"{where}: {type(value).__name__} is not JSON-able (allowed: None, bool, int, float, str, bytes, "
        "list, tuple, dict, NumPy scalars)"
    )


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__bytes__":
                return base64.b64decode(inner)
            if tag == "__tuple__":
                return tuple(_from_json(v) for v in inner)
            if tag == "__dict__":
                return {_hashable(_from_json(k)): _from_json(v) for k, v in inner}
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ----------------------------------------------------------------------------------------------------
# Array pytrees <-> canonical path entries.


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _path_part(entry: Any) -> str:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def _flatten(tree: Any, what: str) -> tuple[list[tuple[tuple[str, ...], Any]], Any]:
    """(path strings, leaf) in treedef order, Variables as leaves, plus the treedef; rejects collisions."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    out = [(tuple(_path_part(p) for p in path), leaf) for path, leaf in flat]
    seen: set[tuple[str, ...]] = set()
    for path, _ in out:
        if path in seen:
            raise CheckpointError(f"{what}: two leaves have the same path {_name(path)!r}")
        seen.add(path)
    for path in seen:
        for i in range(1, len(path)):
            if path[:i] in seen:
                raise CheckpointError(f"{what}: {_name(path[:i])!r} is both a leaf and a container")
    return out, treedef


def _name(path: tuple[str, ...] | list[str]) -> str:
    return "/".join(path) if path else "<root>"


def _nest(entries: list[tuple[tuple[str, ...], Any]]) -> dict:
    root: dict = {}
    for path, value in entries:
        if not path:
            raise CheckpointError("the state must be a container of arrays, not a single array")
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return root


def _lookup(tree: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _is_key_dtype(dtype: Any) -> bool:
    try:
        return jnp.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _stored_leaf(leaf: Any, where: str) -> tuple[Any, dict]:
    """What goes to Orbax for one leaf (a jax or NumPy array), and its manifest entry."""
    value = leaf.get_value() if _is_variable(leaf) else leaf
    entry: dict[str, Any] = {"key_impl": None, "key_dtype": None}
    if isinstance(value, jax.Array):
        if _is_key_dtype(value.dtype):
            entry.update(key_impl=str(jax.random.key_impl(value)), key_dtype=str(value.dtype))
            value = jax.random.key_data(value)
        if jax.process_count() > 1 and value.is_fully_addressable:
            # A process-local array (e.g. the RNG key each process holds alike): Orbax saves only global
            # arrays from several processes, and NumPy values from the primary one.
            value = np.asarray(value)
    elif isinstance(value, (np.ndarray, np.generic, bool, int, float)):
        value = np.array(value)  # a copy: an async save must not see later in-place changes
    else:
        raise CheckpointError(f"{where}: cannot checkpoint a leaf of type {type(value).__name__}")
    entry.update(shape=list(value.shape), dtype=str(value.dtype))
    return value, entry


def _default_sharding() -> SingleDeviceSharding:
    return SingleDeviceSharding(jax.local_devices()[0])


def _template(leaf: Any, where: str) -> tuple[Any, dict, Any]:
    """For one target leaf: the restore template Orbax gets, the manifest entry it expects, and how to
    turn the restored array back into the target's kind of leaf."""
    value = leaf.get_value() if _is_variable(leaf) else leaf
    if isinstance(value, (jax.Array, jax.ShapeDtypeStruct)):
        sharding = getattr(value, "sharding", None) or _default_sharding()
        if _is_key_dtype(value.dtype):
            # Key data has one more trailing axis; a NamedSharding's spec leaves it unsharded.
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(value.shape, value.dtype))
            expect = {"shape": list(data.shape), "dtype": str(data.dtype), "key_dtype": str(value.dtype)}
            tmpl = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        else:
            if jax.dtypes.canonicalize_dtype(value.dtype) != value.dtype:
                raise CheckpointError(
                    f"target {where}: a {np.dtype(value.dtype)} jax array cannot be made with 64-bit jax types "
                    "disabled; use a NumPy array leaf there (restored as NumPy) or enable jax_enable_x64"
                )
            expect = {"shape": list(value.shape), "dtype": str(np.dtype(value.dtype)), "key_dtype": None}
            tmpl = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        kind = "jax"
    elif isinstance(value, (np.ndarray, np.generic, bool, int, float)):
        arr = np.asarray(value)
        expect = {"shape": list(arr.shape), "dtype": str(arr.dtype), "key_dtype": None}
        tmpl = np.empty(arr.shape, arr.dtype)  # Orbax restores a NumPy array for a NumPy template
        kind = type(value) if isinstance(value, (bool, int, float)) else "numpy" if arr is value else "np_scalar"
    else:
        raise CheckpointError(f"target {where}: cannot restore into a leaf of type {type(value).__name__}")
    return tmpl, expect, kind


def _finish_leaf(leaf: Any, restored: Any, entry: dict, kind: Any) -> Any:
    if entry.get("key_impl"):
        restored = jax.random.wrap_key_data(restored, impl=entry["key_impl"])
    if isinstance(kind, type):  # a Python scalar in the target
        restored = kind(np.asarray(restored).item())
    elif kind == "np_scalar":
        restored = np.asarray(restored)[()]
    return leaf.replace(restored) if _is_variable(leaf) else restored


def abstract_like(tree: Any) -> Any:
    """The same tree with every array replaced by a ``jax.ShapeDtypeStruct`` carrying its sharding.

    ``nnx.Variable`` wrappers are kept (wrapping the ShapeDtypeStruct), so the result is a valid
    ``Checkpointer.restore`` target for a state shaped like ``tree``. Host values (NumPy arrays, Python
    scalars) and ShapeDtypeStructs pass through unchanged, so that they restore as host values again
    (a NumPy int64 must not come back as a jax int32 with 64-bit jax types disabled).
    """

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------------------------------


class Checkpointer:
    """Periodic, optionally asynchronous, checkpoints of a training run; see the module docstring."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int = 1,
        keep: int | None = 3,
        async_save: bool = True,
    ):
        if not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive integer or None (keep all), got {keep!r}")
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        self.save_every = save_every
        self.keep = keep
        self.async_save = async_save
        # Listing: a final step name and a commit_success.txt inside (see the module docstring).
        self._name_format = ocp.step.standard_name_format(
            atomicity_options=ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
        )
        self._manager: ocp.CheckpointManager | None = None
        self._writable = False
        self._closed = False
        self._pending_step: int | None = None  # an asynchronous save that may still be writing

    # -- orbax manager ------------------------------------------------------------------------------

    def _handlers(self) -> dict[str, Any]:
        handlers: dict[str, Any] = {name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS}
        handlers.update({name: ocp.JsonCheckpointHandler() for name in _JSON_ITEMS})
        return handlers

    def _open(self, *, write: bool) -> ocp.CheckpointManager:
        if self._closed:
            raise CheckpointError(f"the checkpointer for {self.directory} is closed")
        if self._manager is not None and (self._writable or not write):
            return self._manager
        if self._manager is not None:  # a reader so far; reopen to write
            self._manager.close()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep if write else None,
            enable_async_checkpointing=self.async_save,
            step_name_format=self._name_format,
            create=write,
            cleanup_tmp_directories=write,
            read_only=not write,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=self._handlers())
        self._writable = write
        return self._manager

    # -- listing ------------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def all_steps(self) -> list[int]:
        """Committed steps on disk, ascending. An asynchronous save appears once it has committed."""
        if not self.directory.is_dir():
            return []
        return sorted(m.step for m in self._name_format.find_all(self.directory))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save ---------------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        rng: jax.Array,
        data_state: dict | None,
        config: dict,
        metadata: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves when ``should_save(step)`` or ``force``; returns whether it did.

        With ``async_save`` this returns once the arrays are copied off the devices; writing and the
        commit continue in the background (the next save, ``wait``, ``restore`` and ``close`` wait for
        it). Saving a step that already exists (committed or in flight) is skipped and returns False;
        saving a step older than the latest committed one raises (resume from the latest instead, or
        delete the newer steps).
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        if not force and not self.should_save(step):
            return False
        if not isinstance(config, dict):
            raise CheckpointError(f"config must be a dict (e.g. ConfigDict.to_dict()), got {type(config).__name__}")
        if data_state is not None and not isinstance(data_state, dict):
            raise CheckpointError(f"data_state must be a dict or None, got {type(data_state).__name__}")
        if metadata is not None and not isinstance(metadata, dict):
            raise CheckpointError(f"metadata must be a dict or None, got {type(metadata).__name__}")

        # Everything is validated and converted before Orbax starts, so a bad value never leaves a
        # half-started save behind.
        leaves, _ = _flatten(state, "state")
        stored, manifest_state = [], []
        for path, leaf in leaves:
            value, entry = _stored_leaf(leaf, f"state {_name(path)!r}")
            stored.append((path, value))
            manifest_state.append({"path": list(path), **entry})
        if not isinstance(rng, (jax.Array, np.ndarray)):
            raise CheckpointError(f"rng must be a jax PRNG key array, got {type(rng).__name__}")
        rng_value, rng_entry = _stored_leaf(rng, "rng")
        # Each array's bits, to tell a corrupted file from a good one on restore (Orbax does not check them).
        *state_prints, rng_entry["fingerprint"] = fingerprints([value for _, value in stored] + [rng_value])
        for entry, print_ in zip(manifest_state, state_prints):
            entry["fingerprint"] = print_
        manifest = {"format": FORMAT_VERSION, "step": step, "state": manifest_state, "rng": rng_entry}
        items: dict[str, Any] = {
            "rng": ocp.args.StandardSave({"key": rng_value}),
            "manifest": ocp.args.JsonSave(manifest),
            "data_state": ocp.args.JsonSave({"value": _to_json(data_state, "data_state")}),
            "config": ocp.args.JsonSave(_to_json(config, "config")),
            "metadata": ocp.args.JsonSave(_to_json(metadata or {}, "metadata")),
        }
        if stored:
            items["state"] = ocp.args.StandardSave(_nest(stored))

        manager = self._write(step, lambda: self._open(write=True))  # creates the folder, cleans old tmp ones
        if step in manager.all_steps():  # includes a save of this step still in flight
            log.info("checkpoint step %d already exists in %s; not saving it again", step, self.directory)
            return False
        latest = self.latest_step()
        if latest is not None and step < latest:
            raise CheckpointError(
                f"cannot save step {step} in {self.directory}: it already holds the later step {latest}"
            )
        # Orbax waits for the previous async save here: its failure surfaces now, named as that step's.
        self._write(self._pending_step, lambda: manager.wait_until_finished())
        saved = self._write(step, lambda: manager.save(step, args=ocp.args.Composite(**items), force=True))
        self._pending_step = step
        return bool(saved)

    def _write(self, step: int | None, write: Any) -> Any:
        """Runs one Orbax write; a failure (disk full, read-only or unwritable folder) becomes one clear
        CheckpointError. The step being written stays a hidden tmp folder, so the committed ones are untouched."""
        try:
            return write()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - TensorStore reports ENOSPC as ValueError("RESOURCE_EXHAUSTED...")
            self._pending_step = None
            first = _short(e)
            latest = self.latest_step()
            kept = f"the last committed step, {latest}, is untouched" if latest is not None else "no step is committed"
            raise CheckpointError(f"cannot write checkpoint step {step} in {self.directory} (disk full or not "
                                  f"writable?): {first}; {kept}") from e

    def wait(self) -> None:
        """Blocks until every pending save has been written and committed (a failure: CheckpointError)."""
        if self._manager is not None:
            self._write(self._pending_step, self._manager.wait_until_finished)
        self._pending_step = None

    # -- restore ------------------------------------------------------------------------------------

    def restore(self, target: Any, step: int | None = None) -> Restored:
        """Restores ``step`` (None: the latest committed one that reads back intact) with arrays placed as in
        ``target``.

        With ``step=None`` a damaged step (a file truncated, missing or with changed bytes: see
        DamagedCheckpoint) is named in a warning, set aside as ``<step>.damaged`` so that the step can be saved
        again, and the previous step is tried; CheckpointError when no step is intact. With N processes
        they agree on the step (one that every process read intact). A named ``step`` that is damaged raises.

        ``target`` has the saved state's structure; each leaf is a ``jax.ShapeDtypeStruct`` (its
        ``.sharding`` says where the array goes; without one, the first local device), a jax array
        (its shape, dtype and sharding are used; its values are not), a NumPy array or a Python scalar
        (restored as the same kind). The target mesh may differ from the one the checkpoint was saved
        from. The RNG key is restored replicated over the mesh of the target's first NamedSharding
        (else on the first local device), as a typed key if a typed key was saved.
        """
        self.wait()
        steps = self.all_steps()
        if not steps:
            why = "does not exist" if not self.directory.exists() else "holds no committed checkpoint"
            raise CheckpointError(f"no checkpoint to restore: {self.directory} {why}")
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no committed checkpoint for step {step} in {self.directory}; committed steps: {steps}"
                )
            return self._restore_step(target, step)
        from memagent_jax.parallel import collectives

        damaged: list[str] = []
        damaged_steps: list[int] = []
        for candidate in reversed(steps):
            try:
                restored, reason = self._restore_step(target, candidate), None
            except DamagedCheckpoint as err:
                restored, reason = None, str(err)
            if not collectives.agree_any(restored is None):
                self._set_aside(damaged_steps)
                return restored
            reason = reason or "damaged as read by another process"
            log.warning("checkpoint step %d in %s is damaged, trying the previous step: %s", candidate,
                        self.directory / str(candidate), reason)
            damaged.append(f"step {candidate}: {reason}")
            damaged_steps.append(candidate)
        raise CheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(damaged) +
                              ". Delete the folder to start this phase again.")

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged step folders out of the listing (process 0, after every process has read past
        them), so the resumed run can save those steps again."""
        if jax.process_index() != 0:
            return
        for step in steps:
            folder = self.directory / str(step)
            aside = self.directory / f"{step}.damaged"
            number = 1
            while aside.exists():
                number += 1
                aside = self.directory / f"{step}.damaged{number}"
            try:
                folder.rename(aside)
            except OSError as err:
                log.warning("could not set damaged checkpoint %s aside: %s", folder, err)
            else:
                log.warning("damaged checkpoint %s moved to %s", folder, aside)
        if self._manager is not None:  # its cached listing still names them
            self._manager.close()
            self._manager = None

    def _read(self, step: int, what: str, read: Any) -> Any:
        """Runs one Orbax read of ``step``: read errors become DamagedCheckpoint, anything else CheckpointError."""
        try:
            return read()
        except Exception as e:  # noqa: BLE001 - sorted by its cause below; the cause is kept
            kind = DamagedCheckpoint if _is_read_error(e) else CheckpointError
            raise kind(f"cannot read the {what} of checkpoint step {step} in {self.directory}: "
                       f"{_short(e)}") from e

    def _restore_step(self, target: Any, step: int) -> Restored:
        manager = self._open(write=False)
        json_args = ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in _JSON_ITEMS})
        meta = self._read(step, "JSON items", lambda: manager.restore(step, args=json_args))
        manifest = meta["manifest"]
        if manifest.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has format {manifest.get('format')!r}; "
                f"this code reads format {FORMAT_VERSION}"
            )

        leaves, treedef = _flatten(target, "target")
        templates, kinds = [], []
        expected: dict[tuple[str, ...], dict] = {}
        for path, leaf in leaves:
            tmpl, expect, kind = _template(leaf, _name(path))
            templates.append((path, tmpl))
            kinds.append(kind)
            expected[path] = expect
        saved = {tuple(e["path"]): e for e in manifest["state"]}
        self._check_structure(step, saved, expected)

        rng_entry = manifest["rng"]
        rng_tmpl = jax.ShapeDtypeStruct(
            tuple(rng_entry["shape"]), np.dtype(rng_entry["dtype"]), sharding=self._rng_sharding(leaves)
        )
        args: dict[str, Any] = {"rng": ocp.args.StandardRestore({"key": rng_tmpl})}
        if templates:
            args["state"] = ocp.args.StandardRestore(_nest(templates))
        arrays = self._read(step, "arrays", lambda: manager.restore(step, args=ocp.args.Composite(**args)))
        restored_arrays = {path: _lookup(arrays["state"], path) for path, _ in leaves}
        self._check_fingerprints(step, saved, restored_arrays, rng_entry, arrays["rng"]["key"])

        out_leaves = [
            _finish_leaf(leaf, _lookup(arrays["state"], path), saved[path], kind)
            for (path, leaf), kind in zip(leaves, kinds)
        ]
        state = jax.tree_util.tree_unflatten(treedef, out_leaves)
        rng = arrays["rng"]["key"]
        if rng_entry.get("key_impl"):
            rng = jax.random.wrap_key_data(rng, impl=rng_entry["key_impl"])
        return Restored(
            step=int(step),
            state=state,
            rng=rng,
            data_state=_from_json(meta["data_state"]["value"]),
            config=_from_json(meta["config"]),
            metadata=_from_json(meta["metadata"]),
        )

    def _check_fingerprints(self, step: int, saved: dict, values: dict[tuple[str, ...], Any], rng_entry: dict,
                            rng: Any) -> None:
        if "fingerprint" not in rng_entry:  # written before fingerprints were stored
            return
        names = [_name(path) for path in values] + ["rng"]
        expected = [saved[path]["fingerprint"] for path in values] + [rng_entry["fingerprint"]]
        got = fingerprints([*values.values(), rng])
        changed = [name for name, e, g in zip(names, expected, got) if e != g]
        if changed:
            raise DamagedCheckpoint(
                f"checkpoint step {step} in {self.directory}: {len(changed)} arrays read back with other bits "
                f"than were saved (corrupted files): {', '.join(changed[:_MAX_LISTED])}"
            )

    def _check_structure(self, step: int, saved: dict, expected: dict) -> None:
        missing = sorted(p for p in saved if p not in expected)
        extra = sorted(p for p in expected if p not in saved)
        differ = []
        for path in sorted(set(saved) & set(expected)):
            s, t = saved[path], expected[path]
            if s["shape"] != t["shape"] or s["dtype"] != t["dtype"] or s.get("key_dtype") != t["key_dtype"]:
                what = lambda e: (f"{e['key_dtype']} {e['shape'][:-1]} (data {e['dtype']}{e['shape']})"  # noqa: E731
                                  if e.get("key_dtype") else f"{e['dtype']}{e['shape']}")
                differ.append(f"{_name(path)}: checkpoint {what(s)}, target {what(t)}")
        if not (missing or extra or differ):
            return

        def listed(paths: list) -> str:
            names = [p if isinstance(p, str) else _name(p) for p in paths]
            more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
            return ", ".join(names[:_MAX_LISTED]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} saved arrays missing from the target: {listed(missing)}")
        if extra:
            parts.append(f"{len(extra)} target leaves not in the checkpoint: {listed(extra)}")
        if differ:
            parts.append(f"{len(differ)} arrays differ in shape or dtype: {listed(differ)}")
        raise CheckpointError(
            f"restore target does not match checkpoint step {step} in {self.directory}: " + "; ".join(parts)
        )

    @staticmethod
    def _rng_sharding(leaves: list[tuple[tuple[str, ...], Any]]) -> Any:
        for _, leaf in leaves:
            value = leaf.get_value() if _is_variable(leaf) else leaf
            sharding = getattr(value, "sharding", None)
            if isinstance(sharding, NamedSharding):
                return NamedSharding(sharding.mesh, PartitionSpec())
        return _default_sharding()

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for pending saves, then releases Orbax's resources. Idempotent."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            if self._manager is not None:
                self._manager.close()
                self._manager = None
            self._closed = True

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
