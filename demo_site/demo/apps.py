from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Publish the "N people are viewing this page" counts (from runserverpush)."""
        from django_adapter import viewers

        viewers.connect()
