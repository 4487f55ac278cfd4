"""The lab's object store emulators, through their own APIs on loopback (installed by the
object_store role; run with its venv's python; settings in CONFIG). Only the emulators
CONFIG lists (object_store_emulators) are touched.

  zapora-object-store-buckets create            make the buckets/containers that are missing
  zapora-object-store-buckets inspect STRING    per store and bucket: object count, objects
                                                not starting with OpenSSL's "Salted__" header
                                                (pgBackRest's aes-256-cbc format), and objects
                                                whose bytes contain STRING; JSON on stdout
"""

import json
import sys
import urllib.error
import urllib.request

CONFIG = "/etc/zapora-object-store/emulators.json"
with open(CONFIG) as f:
    _cfg = json.load(f)
# Each emulator's client is imported only when it runs: the role installs the clients
# of the listed emulators only (boto3 with moto, azure-storage-blob with azurite).
EMULATORS = _cfg.get("emulators", ["s3", "azure", "gcs"])
BUCKETS = _cfg["buckets"]
S3 = f"http://127.0.0.1:{_cfg['s3_port']}"
GCS = f"http://127.0.0.1:{_cfg['gcs_port']}"
AZURE = (
    f"DefaultEndpointsProtocol=http;AccountName={_cfg['azure_account']};"
    f"AccountKey={_cfg['azure_key']};"
    f"BlobEndpoint=http://127.0.0.1:{_cfg['azure_port']}/{_cfg['azure_account']};"
)


def s3():
    import boto3

    return boto3.client("s3", endpoint_url=S3, region_name="us-east-1",
                        aws_access_key_id="emulator", aws_secret_access_key="emulator")


def gcs(method, path, body=None):
    req = urllib.request.Request(GCS + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def azure():
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(AZURE)


def create():
    made = []
    if "s3" in EMULATORS:
        have = {b["Name"] for b in s3().list_buckets().get("Buckets", [])}
        for b in BUCKETS:
            if b not in have:
                s3().create_bucket(Bucket=b)
                made.append(f"s3:{b}")
    if "azure" in EMULATORS:
        from azure.core.exceptions import ResourceExistsError

        az = azure()
        for b in BUCKETS:
            try:
                az.create_container(b)
                made.append(f"azure:{b}")
            except ResourceExistsError:
                pass
    if "gcs" in EMULATORS:
        have = {b["name"] for b in json.loads(gcs("GET", "/storage/v1/b?project=zapora")).get("items", [])}
        for b in BUCKETS:
            if b not in have:
                gcs("POST", "/storage/v1/b?project=zapora", {"name": b})
                made.append(f"gcs:{b}")
    print("created " + " ".join(made) if made else "all buckets exist")


def objects():
    if "s3" in EMULATORS:
        c = s3()
        for b in BUCKETS:
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=b):
                for o in page.get("Contents", []):
                    yield "s3", b, o["Key"], c.get_object(Bucket=b, Key=o["Key"])["Body"].read()
    if "azure" in EMULATORS:
        az = azure()
        for b in BUCKETS:
            cc = az.get_container_client(b)
            for o in cc.list_blobs():
                yield "azure", b, o.name, cc.download_blob(o.name).readall()
    if "gcs" in EMULATORS:
        yield from gcs_objects()


def gcs_objects():
    for b in BUCKETS:
        token = ""
        while True:
            page = json.loads(gcs("GET", f"/storage/v1/b/{b}/o?pageToken={token}"))
            for o in page.get("items", []):
                name = urllib.request.quote(o["name"], safe="")
                yield "gcs", b, o["name"], gcs("GET", f"/download/storage/v1/b/{b}/o/{name}?alt=media")
            token = page.get("nextPageToken")
            if not token:
                break


def inspect(needle):
    report = {}
    for store, bucket, key, data in objects():
        r = report.setdefault(f"{store}:{bucket}", {"objects": 0, "bytes": 0, "not_encrypted": [], "contains": []})
        r["objects"] += 1
        r["bytes"] += len(data)
        if data and not data.startswith(b"Salted__"):
            r["not_encrypted"].append(key)
        if needle.encode() in data:
            r["contains"].append(key)
    print(json.dumps(report, indent=1, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1:2] == ["create"]:
        create()
    elif sys.argv[1:2] == ["inspect"] and len(sys.argv) == 3:
        inspect(sys.argv[2])
    else:
        sys.exit(__doc__)
