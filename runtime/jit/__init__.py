"""The JIT: kernel programs (`backend.pef.program`) to native host code with llvmlite.

* `kernel.py`: a program's stages lowered into one LLVM module (one exported function
  per stage, `i32 f(void **buffers, i64 lo, i64 hi)`), and its content-hash code key;
  stage kinds are lowered by `map.py`, `reduce.py`, `gemm.py` (+ `gemv.py`), `conv.py`,
  `pool.py`, `gather.py`, `concat.py`, `pad.py`, `dynamic.py`;
* `expr.py` and `mathlib.py`: expression bodies, with vectorizable f32 math;
* `codegen.py`, `layout.py`, `module.py`: types, loops, strided accesses, functions;
* `engine.py`: the host target machine, the O3 pipeline (new pass manager), object code,
  MCJIT loading; `cache.py`: object code on disk by code key;
* `library.py`: `Jit.load(programs)` compiles (in parallel) or fetches, then loads;
* `parallel.py`: a stage's parallel range split across threads.
"""
