"""Outbound HTTP, shaped like httpx: one policy and retry decision (``policy``), a client for the
request path (``sync``: requests + urllib3) and one for batch scoring (``aio``: asyncio), and the
keep-alive transport the latter drives (``transport``). Callers never see requests or urllib3:
failures arrive as :mod:`services.errors` types."""
