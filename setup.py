"""The optional C part of the data plane (see src/albingress/dataplane/_speedups.c); the rest
of the build is declared in pyproject.toml. Without a C compiler the package installs without it
and runs the same code in Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "albingress.dataplane._speedups",
            ["src/albingress/dataplane/_speedups.c"],
            optional=True,
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ]
)
