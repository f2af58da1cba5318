#!/usr/bin/env python
"""Django's command line for the example: ``python examples/django_app/manage.py runserver``."""

from __future__ import annotations

import os
import sys

# Make ``examples`` importable when run from anywhere (the repository root is two levels up).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
