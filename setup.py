"""Build the compiled backend: Cython bindings in fastka/ linked with the C core in src/;
and, apart from it, the fast path of ``fastka serve`` (src/serve/).

The C core's view of two Python tables is written at build time into tables.h (in the
build's temporary directory): fastka.Event's codes (fastka/_types.py) and the manager
options it reads (fastka/_manager.py's C_OPTIONS). Edit those, never a copy.

Building is optional. Where there is no compiler (or the build fails for any other
reason) the install still succeeds, with a one-line warning, and fastka runs on its
pure-Python fallback. The serve fast path is an application's extension, not the
library's: its failure leaves the library's extensions alone (and serve on its Python
path), and the library's never depends on it.
"""
import ast
import glob
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
TABLE_SOURCES = ["fastka/_types.py", "fastka/_manager.py"]


def _module(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path).body


def c_tables():
    """The text of tables.h, from the sources' own syntax (the package is not imported)."""
    event = next(node for node in _module("fastka/_types.py") if isinstance(node, ast.ClassDef) and node.name == "Event")
    events = [(stmt.targets[0].id, ast.literal_eval(stmt.value)) for stmt in event.body if isinstance(stmt, ast.Assign)]
    options = next(ast.literal_eval(node.value) for node in _module("fastka/_manager.py")
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "C_OPTIONS")
    return "\n".join([
        "/* Written by setup.py from fastka/_types.py (Event) and fastka/_manager.py (C_OPTIONS). */",
        "#ifndef FASTKA_TABLES_H",
        "#define FASTKA_TABLES_H",
        "#include <stdint.h>",
        "enum fk_event {",
        "    FK_EV_NONE = 0, /* nothing to report */",
        *(f"    FK_EV_{name} = {code}," for name, code in events),
        "};",
        f"enum {{ FK_NOPTIONS = {len(options)} }};",
        "union fk_options { /* by name in C, by position from the binding */",
        "    struct {",
        *(f"        int64_t {name};" for name in options),
        "    };",
        "    int64_t at[FK_NOPTIONS];",
        "};",
        "#endif",
        "",
    ])


def write_tables(directory):
    """Write tables.h into ``directory`` (unless it is there already, unchanged)."""
    os.makedirs(directory, exist_ok=True)
    path, text = os.path.join(directory, "tables.h"), c_tables()
    if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def extensions():
    from Cython.Build import cythonize

    mods = [
        Extension(
            name,
            sources,
            include_dirs=["src"],  # and tables.h's directory (optional_build_ext.run)
            define_macros=[("_GNU_SOURCE", None)],
            libraries=LIBRARIES,
            depends=TABLE_SOURCES + glob.glob("src/*.h"),
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
            generated = os.path.join(self.build_temp, "include")
            write_tables(generated)
            for ext in self.extensions:
                if ext.name in EXTENSIONS:
                    ext.include_dirs.append(generated)
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
