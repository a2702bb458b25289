"""Hugging Face safetensors checkpoints <-> our `Transformer`.

Loading validates every file header against the config before a single array is created, then reads
each tensor through a memory map of its file and builds it with `jax.make_array_from_callback`, so each
device receives only its own slice and no model is ever materialised whole on one device. Saving gathers
one parameter at a time into the HF layout, holds one shard's worth on the host, writes each shard with the
safetensors library into a temporary sibling folder, and renames the folder into place at the end (a crash
never leaves a half-written checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import nnx
from jax.sharding import Mesh

from memagent_jax.model.config import ModelConfig
from memagent_jax.model.sharding import DEFAULT_RULES, Rules, make_mesh, state_shardings
from memagent_jax.model.transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

# safetensors dtype tag <-> numpy dtype (bfloat16 through ml_dtypes, which is also jnp.bfloat16).
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
}
_TAGS = {dtype: tag for tag, dtype in _DTYPES.items()}
# Buffers HF sometimes stores that carry no learned state (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# A header bigger than this is a corrupt file, not a checkpoint (real ones are well under 1 MB).
_MAX_HEADER_BYTES = 100 * 2**20
# XLA's CPU client aliases host buffers aligned like this instead of copying them.
_ALIGN = 64
# Block edge for transposing copies (128 measured best of 32..512 on a 2-core Xeon).
_TILE = 128
# Copies of at least this many bytes are split over up to _THREADS threads.
_THREADED_BYTES = 4 * 2**20
_THREADS = max(1, min(os.cpu_count() or 1, 8))
_POOL: ThreadPoolExecutor | None = None


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into (names the file and the tensor)."""


class CheckpointFileNotFoundError(CheckpointError, FileNotFoundError):
    """A folder or file that the checkpoint needs does not exist."""


# ---- Name and layout mapping: the one place that knows how HF tensors relate to ours --------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How an HF tensor is laid out relative to our parameter of shape `ours`.

    "same": identical. "flat": HF stores ours flattened (q/k/v biases [H*hd]). "linear": a torch Linear
    weight [out, in]; ours is its transpose with `split` leading dims forming `in`, the rest `out`
    (q_proj [d, H, hd]: split=1; o_proj [H, hd, d]: split=2).
    """

    kind: str
    split: int = 1

    def hf_shape(self, ours: Sequence[int]) -> tuple[int, ...]:
        if self.kind == "same":
            return tuple(ours)
        if self.kind == "flat":
            return (math.prod(ours),)
        return (math.prod(ours[self.split:]), math.prod(ours[: self.split]))

    def to_ours(self, hf: np.ndarray, ours: Sequence[int]) -> np.ndarray:
        """HF array -> our layout, as a view (no bytes move until a device slice is copied out)."""
        if self.kind == "linear":
            hf = hf.T
        return np.reshape(hf, tuple(ours), copy=False)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        """Our array -> HF layout (a view; the writer makes it contiguous)."""
        if self.kind == "same":
            return ours
        if self.kind == "flat":
            return ours.reshape(-1)
        rows = math.prod(ours.shape[: self.split])
        return ours.reshape(rows, -1).T


SAME, FLAT = Layout("same"), Layout("flat")
LINEAR_IN, LINEAR_OUT = Layout("linear", 1), Layout("linear", 2)


@dataclasses.dataclass(frozen=True)
class TensorName:
    ours: str  # dotted path in nnx.state(model), e.g. "layers.0.self_attn.q_proj"
    hf: str  # safetensors key, e.g. "model.layers.0.self_attn.q_proj.weight"
    layout: Layout


_PER_LAYER: tuple[tuple[str, str, Layout], ...] = (
    ("input_layernorm.weight", "input_layernorm.weight", SAME),
    ("self_attn.q_proj", "self_attn.q_proj.weight", LINEAR_IN),
    ("self_attn.k_proj", "self_attn.k_proj.weight", LINEAR_IN),
    ("self_attn.v_proj", "self_attn.v_proj.weight", LINEAR_IN),
    ("self_attn.o_proj", "self_attn.o_proj.weight", LINEAR_OUT),
    ("post_attention_layernorm.weight", "post_attention_layernorm.weight", SAME),
    ("mlp.gate_proj", "mlp.gate_proj.weight", LINEAR_IN),
    ("mlp.up_proj", "mlp.up_proj.weight", LINEAR_IN),
    ("mlp.down_proj", "mlp.down_proj.weight", LINEAR_IN),
)
_QKV_BIAS: tuple[tuple[str, str, Layout], ...] = (
    ("self_attn.q_bias", "self_attn.q_proj.bias", FLAT),
    ("self_attn.k_bias", "self_attn.k_proj.bias", FLAT),
    ("self_attn.v_bias", "self_attn.v_proj.bias", FLAT),
)


def tensor_names(cfg: ModelConfig) -> list[TensorName]:
    """Every parameter of a model with this config, paired with its HF name and layout."""
    names = [TensorName("embed_tokens", "model.embed_tokens.weight", SAME)]
    per_layer = _PER_LAYER + (_QKV_BIAS if cfg.qkv_bias else ())
    for i in range(cfg.num_layers):
        names += [TensorName(f"layers.{i}.{ours}", f"model.layers.{i}.{hf}", lay) for ours, hf, lay in per_layer]
    names.append(TensorName("norm.weight", "model.norm.weight", SAME))
    if not cfg.tie_word_embeddings:
        names.append(TensorName("lm_head", "lm_head.weight", LINEAR_IN))
    return names


def _is_ignored(hf_name: str, cfg: ModelConfig) -> bool:
    # A tied model's lm_head is the embedding table; some exporters write it anyway.
    return hf_name.endswith(_IGNORED_SUFFIXES) or (cfg.tie_word_embeddings and hf_name == "lm_head.weight")


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def _model_variables(state: nnx.State, cfg: ModelConfig) -> dict[str, nnx.Variable]:
    """Our variables by dotted path, checked against the mapping table (catches a stale table)."""
    variables = {_dotted(path): var for path, var in nnx.to_flat_state(state)}
    table = {t.ours for t in tensor_names(cfg)}
    if set(variables) != table:
        raise RuntimeError(
            "hf.py's name table is out of date with the Transformer: "
            f"unmapped {sorted(set(variables) - table)}, missing {sorted(table - set(variables))}"
        )
    return variables


# ---- Reading safetensors headers ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype tag, shape and absolute byte range in the file."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parses one file's header (only the header is read); malformed entries raise CheckpointError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_len < 2 or header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: not a safetensors file (header length {header_len}, file {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    base = 8 + header_len
    problems, tensors = [], {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: tensor {name!r}: malformed header entry {entry!r}")
            continue
        if not 0 <= begin <= end or base + end > size:
            problems.append(f"{path}: tensor {name!r}: bytes [{begin}, {end}) lie outside the file (truncated?)")
        elif dtype in _DTYPES and end - begin != math.prod(shape) * _DTYPES[dtype].itemsize:
            problems.append(f"{path}: tensor {name!r}: {end - begin} bytes do not hold {dtype} {list(shape)}")
        tensors[name] = TensorInfo(path, name, dtype, shape, base + begin, base + end)
    if problems:
        raise CheckpointError("\n".join(problems))
    return tensors


def checkpoint_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint folder, and the index's weight map when it is sharded."""
    if not directory.is_dir():
        raise CheckpointFileNotFoundError(f"checkpoint folder {directory} does not exist")
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({err!r})") from err
        by_file: dict[str, list[str]] = {}
        for tensor, file in weight_map.items():
            by_file.setdefault(file, []).append(tensor)
        missing = [f"{index_path}: shard file {directory / file} does not exist "
                   f"(it holds tensors {', '.join(sorted(tensors)[:5])}{' ...' if len(tensors) > 5 else ''})"
                   for file, tensors in sorted(by_file.items()) if not (directory / file).is_file()]
        if missing:
            raise CheckpointFileNotFoundError("\n".join(missing))
        return [directory / file for file in sorted(by_file)], weight_map
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE], None
    raise CheckpointFileNotFoundError(f"{directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}")


def read_checkpoint_headers(directory: Path) -> dict[str, TensorInfo]:
    """All tensors of a checkpoint by HF name, from headers only (index consistency checked)."""
    files, weight_map = checkpoint_files(directory)
    tensors: dict[str, TensorInfo] = {}
    problems = []
    for path in files:
        for name, info in read_safetensors_header(path).items():
            if name in tensors:
                problems.append(f"{path}: tensor {name!r} is also in {tensors[name].file}")
            elif weight_map is not None and weight_map.get(name) != path.name:
                problems.append(f"{path}: tensor {name!r} is in this file but {INDEX_FILE} says "
                                f"{weight_map.get(name, 'nothing')}")
            tensors[name] = info
    for name, file in (weight_map or {}).items():
        if name not in tensors:
            problems.append(f"{directory / file}: tensor {name!r} is listed in {INDEX_FILE} but not in the file")
    if problems:
        raise CheckpointError("\n".join(problems))
    return tensors


def _validate(
    directory: Path, tensors: dict[str, TensorInfo], names: list[TensorName],
    shapes: dict[str, tuple[int, ...]], cfg: ModelConfig,
) -> None:
    """Every expected tensor present with its expected shape and a supported dtype, nothing extra."""
    problems = []
    where = directory / (INDEX_FILE if (directory / INDEX_FILE).is_file() else SINGLE_FILE)
    expected = {}
    for t in names:
        want = t.layout.hf_shape(shapes[t.ours])
        expected[t.hf] = want
        info = tensors.get(t.hf)
        if info is None:
            problems.append(f"{where}: tensor {t.hf!r} is missing (expected shape {list(want)})")
        elif info.shape != want:
            problems.append(f"{info.file}: tensor {t.hf!r} has shape {list(info.shape)}, expected {list(want)}")
        elif info.dtype not in _DTYPES:
            problems.append(f"{info.file}: tensor {t.hf!r} has dtype {info.dtype}, supported: {sorted(_DTYPES)}")
    for name, info in tensors.items():
        if name not in expected and not _is_ignored(name, cfg):
            problems.append(f"{info.file}: unexpected tensor {name!r} (shape {list(info.shape)}) "
                            f"for a {cfg.family} model with {cfg.num_layers} layers")
    if problems:
        raise CheckpointError(f"checkpoint {directory} does not match its config.json "
                              f"({len(problems)} problem{'s' * (len(problems) > 1)}):\n" + "\n".join(problems))


# ---- Loading ------------------------------------------------------------------------------------


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A fresh array at an _ALIGN-byte address, so device_put on CPU adopts it instead of copying."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset: offset + nbytes].view(dtype).reshape(shape)


def _copy_blocks(out: np.ndarray, src: np.ndarray) -> list[list[tuple[slice, ...]]]:
    """Index blocks of `out`, one list per thread.

    A transposing copy is bound by TLB misses (consecutive output elements lie a source row apart, on
    different pages), so it goes in _TILE x _TILE blocks over the output's contiguous (last) axis and
    the source's contiguous axis; threads split the last axis, so each reads its own part of the file.
    """
    threads = _THREADS if out.nbytes >= _THREADED_BYTES else 1
    last = out.ndim - 1
    steps = [abs(stride) if size > 1 else np.inf for stride, size in zip(src.strides, src.shape)]
    across = int(np.argmin(steps)) if out.ndim else last
    full = [slice(None)] * out.ndim
    if across == last or out.ndim < 2:  # same memory order: plain slabs along the first axis
        if out.ndim == 0 or out.shape[0] < threads:
            return [[tuple(full)]]
        bounds = np.linspace(0, out.shape[0], threads + 1).astype(int)
        return [[(slice(a, b), *full[1:])] for a, b in zip(bounds, bounds[1:])]
    per_thread: list[list[tuple[slice, ...]]] = [[] for _ in range(threads)]
    for n, j in enumerate(range(0, out.shape[last], _TILE)):
        for i in range(0, out.shape[across], _TILE):
            block = list(full)
            block[across], block[last] = slice(i, i + _TILE), slice(j, j + _TILE)
            per_thread[n * threads // -(-out.shape[last] // _TILE)].append(tuple(block))
    return [blocks for blocks in per_thread if blocks]


def _merge_axes(a: np.ndarray) -> np.ndarray:
    """The same view with neighbouring axes merged where strides allow (q_proj [d, H, hd] -> [d, H*hd])."""
    shape, strides = list(a.shape[:1]), list(a.strides[:1])
    for size, stride in zip(a.shape[1:], a.strides[1:]):
        if strides[-1] == size * stride:
            shape[-1] *= size
            strides[-1] = stride
        else:
            shape.append(size)
            strides.append(stride)
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False) if a.ndim else a


def _run_blocks(out: np.ndarray, src: np.ndarray, blocks: list[tuple[slice, ...]]) -> None:
    for block in blocks:
        np.copyto(out[block], src[block])


def _copy(src: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One tensor's device slice from the file map into a fresh buffer in our layout and dtype."""
    if src.dtype != dtype and not src.flags.c_contiguous:
        # Transpose in the stored dtype first (fast, threaded), then cast in one contiguous pass.
        src = _copy(src, src.dtype)
    out = _aligned_empty(src.shape, dtype)
    if src.dtype != out.dtype:
        np.copyto(out, src, casting="unsafe")  # casting loops (ml_dtypes') hold the GIL: no threads
        return out
    # The same bytes as unsigned ints take numpy's own copy loops, which release the GIL
    # (ml_dtypes' bfloat16 loop does not), so threads really run in parallel.
    raw = np.dtype(f"u{src.itemsize}")
    src_raw = _merge_axes(src.view(raw))
    out_raw = out.view(raw).reshape(src_raw.shape)
    work = _copy_blocks(out_raw, src_raw)
    if len(work) == 1:
        _run_blocks(out_raw, src_raw, work[0])
    else:
        global _POOL
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="hf-load")
        for job in [_POOL.submit(_run_blocks, out_raw, src_raw, blocks) for blocks in work]:
            job.result()
    return out


class _MappedFiles:
    """Read-only memory maps of the checkpoint files, opened lazily and closed together."""

    def __init__(self) -> None:
        self._maps: dict[Path, np.memmap] = {}

    def view(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes in the file as a numpy array: zero-copy, nothing is read yet."""
        if info.file not in self._maps:
            self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        mapped = self._maps[info.file]
        # Start reading ahead now (a no-op on a warm page cache); per tensor, so memory stays bounded.
        start = info.start - info.start % mmap.PAGESIZE
        if info.end > start:
            mapped._mmap.madvise(mmap.MADV_WILLNEED, start, info.end - start)
        return mapped[info.start: info.end].view(_DTYPES[info.dtype]).reshape(info.shape)

    def close(self) -> None:
        self._maps.clear()  # the maps unmap once the last view is gone


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The Transformer with ShapeDtypeStructs for values (nothing allocated); same graph as a real one."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def _single_device_mesh() -> Mesh:
    return make_mesh({}, devices=[jax.devices()[0]])


def load_hf_checkpoint(
    directory: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    dtype: str | None = None,
    param_dtype: str | None = None,
) -> tuple[Transformer, ModelConfig]:
    """Loads an HF Qwen2/Llama safetensors checkpoint folder into a `Transformer` placed on `mesh`.

    dtype / param_dtype override the compute and weight dtypes (otherwise ModelConfig's defaults,
    float32, whatever the stored dtype); weights are cast to param_dtype while copying. Every header
    is validated before any array exists; then each parameter is built directly in its target
    sharding, one tensor at a time, each device's slice copied straight from the file map.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointFileNotFoundError(f"checkpoint folder {directory} does not exist")
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    cfg = ModelConfig.from_hf(directory / CONFIG_FILE, **overrides)

    graphdef, state = nnx.split(abstract_model(cfg))
    variables = _model_variables(state, cfg)
    shapes = {path: tuple(var.get_value().shape) for path, var in variables.items()}
    names = tensor_names(cfg)
    tensors = read_checkpoint_headers(directory)
    _validate(directory, tensors, names, shapes, cfg)

    shardings = {_dotted(p): v.get_value() for p, v in nnx.to_flat_state(
        state_shardings(state, mesh if mesh is not None else _single_device_mesh(), rules))}
    target_dtype = cfg.weight_dtype
    files = _MappedFiles()
    try:
        for t in names:
            source = t.layout.to_ours(files.view(tensors[t.hf]), shapes[t.ours])
            array = jax.make_array_from_callback(
                shapes[t.ours], shardings[t.ours], lambda index, src=source: _copy(src[index], target_dtype)
            )
            variables[t.ours].set_value(array)
            del source
    finally:
        files.close()
    return nnx.merge(graphdef, state), cfg


# ---- Saving -------------------------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    name = jnp.dtype(dtype).name
    if np.dtype(name) not in _TAGS:
        raise ValueError(f"cannot save dtype {name}; supported: float32, bfloat16, float16")
    return name


def _plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy, order-preserving split into files of at most max_shard_bytes (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _write_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Forces a file another writer closed onto the disk before the folder is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_hf_checkpoint(
    model: Transformer,
    directory: str | os.PathLike,
    *,
    max_shard_bytes: int = 5 * 2**30,
    dtype: Any = None,
    overwrite: bool = False,
) -> Path:
    """Writes `model` as an HF checkpoint folder (config.json + safetensors, sharded past max_shard_bytes).

    dtype: the stored weight dtype (default: the model's compute dtype, its own: float32 master weights of a
    bfloat16 model are written rounded to bfloat16, as the checkpoint it came from). One parameter at a time is
    gathered to the host, and one shard (max_shard_bytes) is held there until it is written. Everything is
    written to a temporary sibling and renamed into place at the end.
    """
    target = Path(directory)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not overwrite)):
        raise FileExistsError(f"{target} exists and is not an empty folder; pass overwrite=True to replace it")
    cfg = model.cfg
    store = np.dtype(_dtype_name(dtype if dtype is not None else cfg.dtype))
    hf_config = cfg.replace(param_dtype=store.name).to_hf()
    variables = _model_variables(nnx.state(model), cfg)
    names = tensor_names(cfg)
    shapes = {t.hf: t.layout.hf_shape(variables[t.ours].get_value().shape) for t in names}
    nbytes = {t.hf: math.prod(shapes[t.hf]) * store.itemsize for t in names}
    shards = _plan_shards([(t.hf, nbytes[t.hf]) for t in names], max_shard_bytes)
    by_hf = {t.hf: t for t in names}
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        for file, shard in zip(files, shards):
            # One shard on the host at a time (at most max_shard_bytes, or one bigger tensor): safetensors
            # writes a file from all its arrays at once, straight from their buffers (no second copy).
            arrays = {}
            for name in shard:
                t = by_hf[name]
                host = np.asarray(jax.device_get(variables[t.ours].get_value()))
                arrays[name] = _copy(t.layout.to_hf(host), store)  # transposed and cast in one pass
                del host
            safetensors.numpy.save_file(arrays, tmp / file, metadata={"format": "pt"})
            del arrays
            _fsync(tmp / file)
        if len(files) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())},
                     "weight_map": {n: file for file, shard in zip(files, shards) for n in shard}}
            _write_fsync(tmp / INDEX_FILE, json.dumps(index, indent=2).encode())
        _write_fsync(tmp / CONFIG_FILE, json.dumps(hf_config, indent=2).encode())
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def replace_folder(tmp: Path, target: Path) -> None:
    """Renames the finished folder into place; an old folder is moved aside first and removed last."""
    if target.exists() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)  # POSIX rename replaces an empty folder atomically
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
