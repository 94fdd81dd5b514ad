"""The HTTP layer of status_api: typed dependencies (`deps`) and one router per resource."""
