"""The device suite's view of the device: what it is, its memory, its bf16 peak (data sheet and
measured) and the attention kernel the models run on it."""

import os
import platform

import jax
import jax.numpy as jnp

from wmtp_jax.bench import step as step_bench
from wmtp_jax.models import layers
from wmtp_jax.training import flops

GIB = 2**30
CUDNN_ATTENTION = "__cudnn$fmha"  # custom-call targets of cuDNN's fused attention (fwd and bwd)


def device_info() -> dict:
  """The first device's kind and platform, the device count, the jax version, the memory limit."""
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  return {"device_kind": device.device_kind, "platform": device.platform,
          "n_devices": jax.device_count(), "jax": jax.__version__,
          "python": platform.python_version(),
          "memory_limit_gib": stats["bytes_limit"] / GIB if "bytes_limit" in stats else None,
          "attention_env": os.environ.get(layers.ATTENTION_ENV, "auto")}


def memory_capacity(override_gib: float | None) -> tuple[float, str]:
  """``(bytes, source)`` a step may use on one device: ``override_gib``, else 95 % of the
  allocator's ``bytes_limit`` (``memory_stats``; the rest for fragmentation), else the host's
  physical memory (CPU)."""
  if override_gib:
    return override_gib * GIB, "--memory-gib"
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return 0.95 * stats["bytes_limit"], "0.95 x memory_stats bytes_limit"
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"


def peak_memory_gib(compiled_need_bytes: float | None) -> dict:
  """``{"peak_memory_gib", "peak_memory_source"}``: the device's peak bytes in use so far
  (``memory_stats``; the process's peak, so the largest of the parts run until now) where the
  backend has it, else what the compiled step needs (arguments + outputs − aliases + temps)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"peak_memory_gib": stats["peak_bytes_in_use"] / GIB,
            "peak_memory_source": "memory_stats peak_bytes_in_use (process, so far)"}
  return {"peak_memory_gib": None if compiled_need_bytes is None else compiled_need_bytes / GIB,
          "peak_memory_source": "compiled memory analysis"}


def choose_peak(device_kind: str, measured: float, override: float | None) -> tuple[float, str]:
  """``(FLOP/s per device, source)`` the MFU is against: ``override`` (``--peak-flops``), else the
  data sheet's bf16 peak of ``device_kind`` (``flops.known_peak_flops``), else ``measured``."""
  if override:
    return override, "override"
  known = flops.known_peak_flops(device_kind)
  return (known, "table") if known else (measured, "measured")


def peak(budget, out: dict, *, matmul_n: int, repeats: int, override: float | None) -> None:
  """The bf16 matmul peak measured now (``flops.measure_peak_flops``), the table's, the one used."""
  kind = jax.devices()[0].device_kind
  measured = flops.measure_peak_flops("bfloat16", n=matmul_n, repeats=repeats)
  used, source = choose_peak(kind, measured, override)
  out.update(device_kind=kind, matmul_n=matmul_n, measured_flops=measured,
             table_flops=flops.known_peak_flops(kind), override_flops=override, used_flops=used,
             source=source, measured_over_used=measured / used)


def _fwd_bwd_seconds(fn, args, repeats: int) -> float:
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=(0, 1, 2)))
  return step_bench.median_seconds(grad, *args, repeats=repeats)


def attention(budget, out: dict, *, batch: int, seq: int, n_heads: int, n_kv_heads: int,
              head_dim: int, repeats: int) -> None:
  """Which attention kernel the models run here, and what each kernel costs.

  ``layers_choice``: ``layers.attention_implementation`` for bf16 at this head width;
  ``compiled_block_runs``: what the optimized HLO of a bf16 ``layers.Block``'s forward + backward
  at ``[batch, seq]`` holds (``cudnn`` if cuDNN's fused attention custom call, else ``xla``);
  ``fwd_bwd_s``: forward + backward of ``jax.nn.dot_product_attention`` alone (causal, bf16) with
  each implementation, or the error where one does not run. If cuDNN is chosen but fails here,
  ``WMTP_JAX_ATTENTION=xla`` is set for the rest of the run (``fallback``)."""
  dim = n_heads * head_dim
  shape_q, shape_kv = (batch, seq, n_heads, head_dim), (batch, seq, n_kv_heads, head_dim)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, s, jnp.bfloat16)
             for key, s in zip(keys, (shape_q, shape_kv, shape_kv)))
  out.update(shape={"batch": batch, "seq": seq, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
                    "head_dim": head_dim},
             layers_choice=layers.attention_implementation(jnp.bfloat16, head_dim,
                                                           kv_cache=False), fwd_bwd_s={})
  for impl in ("xla", "cudnn"):
    try:
      out["fwd_bwd_s"][impl] = _fwd_bwd_seconds(
          lambda *a, i=impl: jax.nn.dot_product_attention(*a, is_causal=True, implementation=i),
          (q, k, v), repeats)
    except Exception as e:  # pylint: disable=broad-except  (cuDNN absent or shape unsupported)
      out["fwd_bwd_s"][impl] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    budget.check(f"the {impl} attention")
  cfg = layers.BlockConfig(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_hidden=2 * dim,
                           dtype="bfloat16")
  block = layers.Block(cfg)
  x = jax.random.normal(keys[3], (batch, seq, dim), jnp.bfloat16)
  positions = jnp.broadcast_to(jnp.arange(seq)[None, :], (batch, seq))
  inputs = (x, *layers.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta),
            jnp.ones((batch, seq), jnp.int32))
  try:
    params = jax.jit(block.init)(jax.random.key(1), *inputs)
    loss = lambda p, x: jnp.sum(block.apply(p, x, *inputs[1:]).astype(jnp.float32))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    out["compiled_block_runs"] = "cudnn" if CUDNN_ATTENTION in hlo else "xla"
  except Exception as e:  # pylint: disable=broad-except
    if out["layers_choice"] != "cudnn":
      raise
    os.environ[layers.ATTENTION_ENV] = "xla"
    out.update(compiled_block_runs=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
               fallback=f"{layers.ATTENTION_ENV}=xla for the rest of this run")
  timed = {i: s for i, s in out["fwd_bwd_s"].items() if isinstance(s, float)}
  out["faster"] = min(timed, key=timed.get) if timed else None
