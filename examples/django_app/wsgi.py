"""Django's own WSGI application: the idempotency middleware is in ``settings.MIDDLEWARE``.

Run:  python examples/django_app/manage.py runserver 8000        (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -w 4 -k gthread --threads 8 \\
           -b 127.0.0.1:8000 examples.django_app.wsgi:application
      REDIS_URL=redis://127.0.0.1:6379/0 uvicorn --workers 4 examples.django_app.asgi:application
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \\
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'

Settings: ``examples/django_app/settings.py`` (the only one).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_wsgi_application()
