"""What Fragua talks to besides storage: W&B tracking, notifications, Prefect blocks and the Prefect API."""
