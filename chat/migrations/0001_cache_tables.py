"""Create the database cache tables, so `manage.py migrate` alone prepares everything.

Only caches configured with Django's DatabaseCache get a table (the embedded default, or PostgreSQL
without Redis); with Redis this does nothing. createcachetable skips tables that already exist.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_tables(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = []
    operations = [migrations.RunPython(create_cache_tables, migrations.RunPython.noop)]
