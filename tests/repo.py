"""Where the checkout under test is: ``ROOT`` (the folder holding pyproject.toml)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
