"""The two demo users, alice and bob (password "demo")."""

from django.contrib.auth.hashers import make_password
from django.db import migrations


def create_users(apps, schema_editor):
    user_model = apps.get_model("auth", "User")
    for name in ("alice", "bob"):
        user_model.objects.get_or_create(
            username=name, defaults={"password": make_password("demo")}
        )


class Migration(migrations.Migration):
    dependencies = [("demo", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_users, migrations.RunPython.noop)]
