#!/usr/bin/env python3
"""Creates a bucket (S3, GCS) or container (Azure) on a local test server, stdlib only.

    mkbucket.py s3    http://127.0.0.1:5000 test                    # moto: requests are not checked
    mkbucket.py gcs   http://127.0.0.1:4443 test                    # fake-gcs-server, JSON API
    mkbucket.py azure http://127.0.0.1:10000/devstoreaccount1 test  # Azurite, SharedKey with its dev key

Succeeds if the bucket exists afterwards (created now or before).
"""
import base64
import datetime
import hashlib
import hmac
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

# Azurite's published development account (not a secret: it is in Azurite's README).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def call(request):
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def s3(endpoint, name):
    return call(urllib.request.Request(f"{endpoint}/{name}", method="PUT", data=b""))


def gcs(endpoint, name):
    body = json.dumps({"name": name}).encode()
    headers = {"Content-Type": "application/json"}
    return call(urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", data=body, headers=headers))


def azure(endpoint, name):
    # SharedKey: HMAC-SHA256 over the verb, twelve standard headers, the x-ms-* headers and
    # the canonical resource. Content-Type is set explicitly (urllib would add one) and signed.
    path = urllib.parse.urlparse(endpoint).path.rstrip("/") + f"/{name}"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    content_type = "application/octet-stream"
    standard = ["", "", "", "", content_type, "", "", "", "", "", ""]
    to_sign = "\n".join(["PUT"] + standard) + "\n"
    to_sign += f"x-ms-date:{date}\nx-ms-version:2021-08-06\n/{AZURITE_ACCOUNT}{path}\nrestype:container"
    key = base64.b64decode(AZURITE_KEY)
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    headers = {
        "Content-Type": content_type,
        "x-ms-date": date,
        "x-ms-version": "2021-08-06",
        "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{signature}",
    }
    url = f"{endpoint.rstrip('/')}/{name}?restype=container"
    return call(urllib.request.Request(url, method="PUT", data=b"", headers=headers))


def main():
    kind, endpoint, name = sys.argv[1:4]
    status, body = {"s3": s3, "gcs": gcs, "azure": azure}[kind](endpoint.rstrip("/"), name)
    exists = status in (200, 201, 409) or b"AlreadyOwnedByYou" in body or b"AlreadyExists" in body
    print(f"{kind} bucket {name!r}: HTTP {status}" + ("" if exists else f" {body[:300]!r}"))
    sys.exit(0 if exists else 1)


if __name__ == "__main__":
    main()
