"""Build the compiled backend: Cython bindings in fastka/ linked with the C core in src/.

Building is optional. Where there is no compiler (or the build fails for any other
reason) the install still succeeds, with a one-line warning, and fastka runs on its
pure-Python fallback.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Each extension: its Cython module and the C files of src/ it links. The manager is
# built on epoll, so only on Linux; elsewhere the package pairs the compiled keepalive
# core with the selectors-based manager.
EXTENSIONS = {
    "fastka._keepalive_c": ["fastka/_keepalive_c.pyx", "src/keepalive.c", "src/liveness.c", "src/uring.c"],
}
if sys.platform.startswith("linux"):
    EXTENSIONS["fastka._manager_c"] = [
        "fastka/_manager_c.pyx",
        "src/manager.c",
        "src/keepalive.c",
        "src/liveness.c",
    ]
if sys.platform == "win32":
    LIBRARIES = ["ws2_32"]
elif sys.platform.startswith("sunos"):  # Solaris and illumos keep the socket calls apart
    LIBRARIES = ["socket", "nsl"]
else:
    LIBRARIES = []


def extensions():
    from Cython.Build import cythonize

    mods = [
        Extension(
            name,
            sources,
            include_dirs=["src"],
            define_macros=[("_GNU_SOURCE", None)],
            libraries=LIBRARIES,
        )
        for name, sources in EXTENSIONS.items()
    ]
    return cythonize(mods, language_level=3, compiler_directives={"binding": False})


class optional_build_ext(build_ext):
    """build_ext that degrades to the pure-Python fallback instead of failing the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and friends)
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler present but the build failed
            self._warn(exc)

    def _warn(self, exc):
        if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
            raise exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(
            f"WARNING: fastka's C extension could not be built ({first}); "
            "using the pure-Python fallback.\n"
        )


try:
    ext_modules = extensions()
except Exception as exc:  # Cython missing or failing: still install the fallback
    sys.stderr.write(f"WARNING: fastka's C extension was not generated ({exc}); using the pure-Python fallback.\n")
    ext_modules = []

setup(ext_modules=ext_modules, cmdclass={"build_ext": optional_build_ext})
