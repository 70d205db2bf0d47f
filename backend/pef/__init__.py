"""The PEF format: what the compiler writes and the runtime reads, and nothing of how it was made.

* `file`: the PEF container (header, symbols, sections, entries), its reader and writer;
* `program`: a kernel program (`KernelProgram`), `records` its buffers, accesses and bodies;
* `stages`: one declaration per stage kind; `validate` checks a program before it runs;
* `reference`: the numpy semantics of kernel programs (the oracle);
* `memory_plan`: arenas and allocations; `targets`: the RDU descriptions (`presets/`);
* `schema`: the plain-data codec every record goes through.

The runtime imports only this package of the backend; it imports nothing from the rest of it.
"""
