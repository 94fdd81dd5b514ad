"""One router per resource; `services.status_api.api.main` assembles them."""
