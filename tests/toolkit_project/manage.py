#!/usr/bin/env python
"""The test-helpers example project: ``python manage.py test`` runs its Django tests."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toolkit.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
