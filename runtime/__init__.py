"""The runtime: `runtime.load(pef)` gives a `runtime.program.Program` ready to run."""


def __getattr__(name: str):
    if name == "load":  # imported lazily: data tools need the tokenizer without llvmlite
        from runtime.program import load

        return load
    raise AttributeError(name)
