"""Build the compiled backend: Cython bindings in fastka/ linked with the C core in src/;
and, apart from it, the fast path of ``fastka serve`` (src/serve/).

Building is optional. Where there is no compiler (or the build fails for any other
reason) the install still succeeds, with a one-line warning, and fastka runs on its
pure-Python fallback. The serve fast path is an application's extension, not the
library's: its failure leaves the library's extensions alone (and serve on its Python
path), and the library's never depends on it.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Each extension: its Cython module and the C files of src/ it links. The manager is
# built on epoll, so only on Linux; elsewhere the package pairs the compiled keepalive
# core with the selectors-based manager.
EXTENSIONS = {
    "fastka._keepalive_c": ["fastka/_keepalive_c.pyx", "src/sockopt.c", "src/liveness.c"],
}
if sys.platform.startswith("linux"):
    EXTENSIONS["fastka._manager_c"] = [
        "fastka/_manager_c.pyx",
        "src/manager.c",
        "src/sockopt.c",
        "src/liveness.c",
    ]
if sys.platform == "win32":
    LIBRARIES = ["ws2_32"]
elif sys.platform.startswith("sunos"):  # Solaris and illumos keep the socket calls apart
    LIBRARIES = ["socket", "nsl"]
else:
    LIBRARIES = []
# The applications' extensions: (sources, include directory), built after the library's and
# each on its own.
APPLICATION_EXTENSIONS = {
    "fastka.cli.serve._fastpath": (["fastka/cli/serve/_fastpath.pyx", "src/serve/http_simple.c"], "src/serve"),
}


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
    mods += [Extension(name, sources, include_dirs=[include]) for name, (sources, include) in APPLICATION_EXTENSIONS.items()]
    # binding=True: compiled functions and methods carry their signatures (inspect.signature,
    # help()) as Python ones do.
    return cythonize(mods, language_level=3, compiler_directives={"binding": True})


def _required():
    return bool(os.environ.get("FASTKA_REQUIRE_EXTENSION"))


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _warn(exc):
    """One line on stderr: why the fallback is used."""
    sys.stderr.write(f"WARNING: fastka's C extension could not be built ({_first_line(exc)}); using the pure-Python fallback.\n")


class optional_build_ext(build_ext):
    """build_ext that degrades to the pure-Python fallback instead of failing the install.

    The package uses all of its compiled modules or none (fastka/__init__.py), so the first
    failure stops the build of the rest and is reported once. An application's extension
    (APPLICATION_EXTENSIONS) is built whatever happened to the library's, and its failure is
    reported on its own line. FASTKA_REQUIRE_EXTENSION turns any failure into an error (CI,
    wheel builds).
    """

    failed = False

    def initialize_options(self):
        super().initialize_options()
        self.not_built = set()  # names of the extensions that failed or were skipped

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and friends)
            self._give_up(exc)

    def build_extension(self, ext):
        if ext.name in APPLICATION_EXTENSIONS:
            try:
                super().build_extension(ext)
            except Exception as exc:
                if _required():
                    raise
                self.not_built.add(ext.name)
                sys.stderr.write(f"WARNING: {ext.name} could not be built ({_first_line(exc)}); fastka serve answers every request on its Python path.\n")
            return
        if self.failed:
            self.not_built.add(ext.name)
            return
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler present but the build failed
            self.not_built.add(ext.name)
            self._give_up(exc)

    def copy_extensions_to_source(self):
        """--inplace: copy only what was built (an application's extension may be missing)."""
        everything = self.extensions
        self.extensions = [ext for ext in everything if ext.name not in self.not_built]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything

    def _give_up(self, exc):
        if _required():
            raise exc
        if not self.failed:
            self.failed = True
            _warn(exc)


try:
    ext_modules = extensions()
except Exception as exc:  # Cython missing or failing: still install the fallback
    if _required():
        raise
    _warn(exc)
    ext_modules = []

setup(ext_modules=ext_modules, cmdclass={"build_ext": optional_build_ext})
