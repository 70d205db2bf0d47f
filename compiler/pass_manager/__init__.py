"""What runs the passes of `compiler.passes`: the pass infrastructure.

- `base`: the `Pass` base class, its options and `PassContext`
- `registry`: pass name -> class (built-ins, `rduflow.passes` entry points)
- `plugins`: `--load-pass FILE.py`
- `pipeline_syntax`: the textual pipeline `canonicalize,fuse{max-ops=32}`
- `levels`: the pipelines of `-O0`, `-O1`, `-O3`
- `manager`: `PassManager`, which runs a pipeline and calls instrumentation hooks
- `instrument`, `semantics`: instrumentation (IR printing, timing, statistics, bisect;
  checking each pass against the reference interpreter)
- `target_option`: the `target` option of target-dependent passes

Import the public names from `compiler.passes`, which also registers the built-in passes.
"""
