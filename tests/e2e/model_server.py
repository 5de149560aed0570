"""Serves one directory over HTTPS on the node's IP: the model mirror of the end-to-end test.

The InferenceService names the file with an ordinary https:// model.uri, so the operator's init container runs
`kiln-agent fetch` against it exactly as it would against a mirror inside a company network. HTTPS, not plain
HTTP: the InferenceService schema accepts only https:// for URLs (plain http:// is refused on purpose), so the
server's certificate comes from a private CA that tests/e2e/run.sh bakes into the test's agent image.
Every request is logged to stderr (client address, request line, status): the test checks the pod fetched.
With --rate the body is sent at that many bytes per second, like a mirror across a slow link, so the download
lasts long enough for its progress to show in the InferenceService's status.
"""

import argparse
import functools
import http.server
import shutil
import ssl
import time


class ThrottledHandler(http.server.SimpleHTTPRequestHandler):
    """Sends file bodies at `rate` bytes per second (0: as fast as the socket takes them)."""

    rate = 0

    def copyfile(self, source, outputfile):
        if not self.rate:
            shutil.copyfileobj(source, outputfile)
            return
        chunk = max(1, self.rate // 20)
        start, sent = time.monotonic(), 0
        while block := source.read(chunk):
            outputfile.write(block)
            sent += len(block)
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bind", required=True, help="address to listen on (the node IP)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True, help="directory to serve")
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--rate", type=int, default=0, help="bytes per second per response body (0: unthrottled)")
    a = p.parse_args()

    ThrottledHandler.rate = a.rate
    handler = functools.partial(ThrottledHandler, directory=a.dir)
    server = http.server.ThreadingHTTPServer((a.bind, a.port), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
