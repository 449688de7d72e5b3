"""Wire protocols, sans-IO: bytes in, values out, values in, bytes out. No sockets, no asyncio."""
