"""Package discovery: the fixed top-level folders are the subpackages of one namespace, `megaclass`.

Every folder below them that holds an `__init__.py` is found here, so a new subpackage is in the
regular install (the Docker images) as well as the editable one. A folder missing from the source
is left out: the serving images build from `python_backend/` alone. Everything else is in
pyproject.toml.
"""

from pathlib import Path

from setuptools import find_packages, setup

FOLDERS = [folder for folder in ("python_backend", "export", "clients", "loadtest") if Path(folder).is_dir()]

package_dir = {f"megaclass.{folder}": folder for folder in FOLDERS}
packages = [f"megaclass.{folder}" for folder in FOLDERS]
for folder in FOLDERS:
    packages += [f"megaclass.{folder}.{sub}" for sub in find_packages(folder)]

setup(package_dir=package_dir, packages=packages)
