"""The service's routers, one module per resource: :mod:`.identities` (identities and their faces),
:mod:`.recognition` (search and verify), :mod:`.service` (health, the web page, the API docs)."""
