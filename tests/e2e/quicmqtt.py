"""An MQTT 3.1.1 client over QUIC, written for the tests and independent of Weir's Rust
code: aioquic runs the QUIC connection on a background event loop, MQTT packets go over
the first bidirectional stream the client opens (ALPN "mqtt", the EMQX/NanoMQ
convention). Blocking methods, so tests read like the TCP ones."""

import asyncio
import socket
import threading

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

from rawmqtt import Packets, puback_packet, split_packet, subscribe_packet


class QuicMqtt(Packets):
    def __init__(self, port, cafile, server_name="localhost", timeout=10, session_ticket=None,
                 on_ticket=None, cert=None):
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = QuicConfiguration(is_client=True, alpn_protocols=["mqtt"], server_name=server_name)
        config.load_verify_locations(cafile)
        if cert:
            config.load_cert_chain(*cert)
        config.session_ticket = session_ticket
        self.on_ticket = on_ticket
        self._run(self._open(port, config))

    def _run(self, coro, timeout=None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout or self.timeout)
        except TimeoutError:
            # A read left waiting would make the next one fail.
            fut.cancel()
            raise

    async def _open(self, port, config):
        self._cm = connect("127.0.0.1", port, configuration=config, session_ticket_handler=self.on_ticket)
        self.protocol = await self._cm.__aenter__()
        self.reader, self.writer = await self.protocol.create_stream()

    def alpn(self):
        return self.protocol._quic.tls.alpn_negotiated

    def send(self, data):
        async def go():
            self.writer.write(data)
            await self.writer.drain()
        self._run(go())

    def packet(self, timeout=None):
        """The next packet (type, flags, body); None once the hub has closed the stream.
        Raises TimeoutError when nothing complete arrives in time."""
        while True:
            got = split_packet(self.buf)
            if got:
                packet, self.buf = got
                return packet
            if self.eof:
                return None
            try:
                chunk = self._run(self.reader.read(65536), timeout)
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk

    def subscribe(self, topic_filter, pkid=1):
        self.send(subscribe_packet(pkid, topic_filter, 1))
        p = self.packet()
        assert p is not None and p[0] == 9, f"expected SUBACK, got {p}"
        return p[2][2:]

    def puback(self, pkid):
        self.send(puback_packet(pkid))

    def closed(self, timeout=5):
        """True if the hub ends the MQTT stream within `timeout`."""
        try:
            while self.packet(timeout) is not None:
                pass
            return True
        except TimeoutError:
            return False

    def rebind(self):
        """Moves the client to a new UDP socket (a new source port), as a NAT rebinding
        or a network change does, and probes the new path with a fresh connection id."""
        async def go():
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0, 0, 0))
            old = self.protocol._transport
            await self.loop.create_datagram_endpoint(lambda: self.protocol, sock=sock)
            old.close()
            self.protocol.change_connection_id()
            await self.protocol.ping()
            return sock.getsockname()[1]
        return self._run(go())

    def local_port(self):
        return self.protocol._transport.get_extra_info("sockname")[1]

    def close(self):
        async def go():
            # The hub may have reset the stream already (it stops reading when it ends a
            # session); then there is nothing left to finish.
            self.writer.transport._closing = True
            try:
                await self._cm.__aexit__(None, None, None)
            except Exception:
                pass
        try:
            self._run(go(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
