"""A real SMTP server (aiosmtpd) for the delivery tests and the sign-in example: it keeps each mail it
accepts as a file (owner-only: mails hold codes) and can be told to refuse, or to answer slowly.

    python smtp_sink.py --dir MAILDIR [--port N] [--refuse-rcpt "550 5.1.1 ..."] [--refuse-data "451 ..."] [--delay S]

Prints {"port": N} on its first line once it listens.
"""

import argparse
import asyncio
import json
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, args):
        self.args = args
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.args.refuse_rcpt:
            return self.args.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.delay:
            await asyncio.sleep(self.args.delay)
        if self.args.refuse_data:
            return self.args.refuse_data
        self.count += 1
        path = os.path.join(self.args.dir, f"{self.count:05d}.json")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf8", errors="replace"),
                },
                out,
            )
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--refuse-rcpt")
    parser.add_argument("--refuse-data")
    parser.add_argument("--delay", type=float, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    sink = Sink(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="smtp-sink"), args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
