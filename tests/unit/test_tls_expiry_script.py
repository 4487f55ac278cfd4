"""The node_exporter role's TLS expiry script (templates/zapora-tls-expiry.sh.j2),
rendered by Ansible's template module on the controller and run there with bash and
openssl: a readable certificate gives its notAfter and readable 1, a missing path
readable 0 and no notAfter. The lab lists only certificates that exist
(tests/e2e/test_monitoring.py checks them there); the missing case is shown here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "node_exporter" / "templates" / "zapora-tls-expiry.sh.j2"


def render(tmp_path: Path, certificates: list[str], textfile_dir: Path) -> Path:
    script = tmp_path / "zapora-tls-expiry.sh"
    extra = tmp_path / "vars.json"
    extra.write_text(
        json.dumps(
            {
                "node_exporter_tls_certificates": certificates,
                "node_exporter_textfile_dir": str(textfile_dir),
            }
        )
    )
    tool = Path(sys.executable).parent / "ansible"
    template = ["-m", "ansible.builtin.template", "-a", f"src={TEMPLATE} dest={script}"]
    out = subprocess.run(
        [str(tool), "localhost", "-i", "localhost,", "-c", "local", "-e", f"@{extra}", *template],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            "PATH": f"{tool.parent}:/usr/bin:/bin",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "false",
            "HOME": str(tmp_path),
        },
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return script


def test_readable_and_missing_certificates(tmp_path: Path) -> None:
    cert = tmp_path / "cert with space.pem"
    key = tmp_path / "key.pem"
    openssl = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "10", "-subj", "/CN=unit", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(
        openssl,
        capture_output=True,
        check=True,
    )
    missing = tmp_path / "missing.pem"
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    script = render(tmp_path, [str(cert), str(missing)], textfile_dir)

    subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=30)

    prom = (textfile_dir / "zapora_tls.prom").read_text()
    series = {
        (m[0], m[1]): float(m[2])
        for m in re.findall(r'^(zapora_tls_\w+)\{path="([^"]*)"\} (\S+)$', prom, re.M)
    }
    not_after = series.pop(("zapora_tls_certificate_not_after_timestamp_seconds", str(cert)))
    assert series == {
        ("zapora_tls_certificate_readable", str(cert)): 1.0,
        ("zapora_tls_certificate_readable", str(missing)): 0.0,
    }, prom
    # -days 10 from now, to the second (openssl's notAfter has whole seconds).
    assert abs(not_after - (time.time() + 10 * 86400)) < 60, prom
    # Left for the textfile collector to read: world-readable, no temporary file behind.
    assert (textfile_dir / "zapora_tls.prom").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfile_dir.iterdir()] == ["zapora_tls.prom"]
