"""`autoswap ui`: the MLflow UI on the project's store, bound to 127.0.0.1, seen in a real browser
(headless Chromium through Selenium and Debian's chromedriver; .ci/run installs both)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_raw

from autoswap import cli

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


# ----------------------------------------------------------------------------- helpers (also used by
# test_reliability): the server as a subprocess in its own process group, stopped by that group's id
def subprocess_env(project: Path) -> dict:
    env = {**os.environ, "DVC_ROOT": str(project), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow runs extra test-only checks when it sees this
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(project: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoswap.cli", "ui", "--port", str(port)], cwd=project,
            env=subprocess_env(project), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"autoswap ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    stop(proc)
    pytest.fail(f"autoswap ui did not answer within 180 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (Linux /proc/net/tcp, hex little-endian)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add(addr)
    return found


# ----------------------------------------------------------------------------- tests
def test_ui_binds_loopback_and_warns_when_exposed(monkeypatch, capsys, mlflow_store):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))

    assert cli.main(["ui", "--port", "5999"]) == 0
    argv, env = calls[-1]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5999"
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{mlflow_store / 'mlruns' / 'mlflow.db'}"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "warning" not in capsys.readouterr().err

    for host in ("0.0.0.0", "192.168.1.5", "myhost.local"):
        assert cli.main(["ui", "--host", host]) == 0
        argv, _ = calls[-1]
        assert argv[argv.index("--host") + 1] == host
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"autoswap: warning: serving the MLflow UI on {host}")
        assert "anyone who can reach it" in err[0]
    for host in ("localhost", "::1", "127.0.0.2"):  # loopback, however written: no warning
        cli.main(["ui", "--host", host])
        assert "warning" not in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    n = len(calls)
    assert cli.main(["ui"]) == 1 and len(calls) == n
    assert capsys.readouterr().err.strip() == (
        "autoswap: MLFLOW_TRACKING_URI is http://tracking.example:5000: open that tracking server's own UI instead"
    )


def test_ui_allows_only_its_own_host_names(monkeypatch, mlflow_store):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.delenv("MLFLOW_SERVER_ALLOWED_HOSTS", raising=False)

    def allowed(*argv):
        assert cli.main(["ui", *argv]) == 0
        a = calls[-1][0]
        return a[a.index("--allowed-hosts") + 1].split(",") if "--allowed-hosts" in a else None

    assert allowed("--port", "5999") == ["localhost:5999", "127.0.0.1:5999"]
    assert allowed("--host", "::1", "--port", "6001") == ["localhost:6001", "127.0.0.1:6001", "[::1]:6001"]
    assert allowed("--port", "80") == ["localhost:80", "127.0.0.1:80", "localhost", "127.0.0.1"]
    assert allowed("--host", "0.0.0.0") is None  # exposed on purpose (and warned): MLflow's own list
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "ui.example:5000")  # the user's own choice wins
    assert allowed() is None and calls[-1][1]["MLFLOW_SERVER_ALLOWED_HOSTS"] == "ui.example:5000"


def _http_status(port: int, host_header: str) -> int:
    """GET / from 127.0.0.1:port with the given Host header; the response's status code."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Host": host_header})
        return conn.getresponse().status
    finally:
        conn.close()


def test_ui_server_listens_on_loopback_only_and_refuses_foreign_hosts(tmp_path, mlflow_store):
    """The real server, no browser: its socket is bound to 127.0.0.1 alone, and a request naming
    another host (a DNS-rebinding page, a private IP, another port) gets 403."""
    proc, base = start_ui(mlflow_store, tmp_path / "ui.log")
    try:
        port = int(base.rsplit(":", 1)[1])
        try:
            import psutil

            bound = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
            ours = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                    if a.family == socket.AF_INET and not a.address.startswith("127.")]
        except ImportError:
            bound = {"127.0.0.1"} if listening_addresses(port) == {"0100007F"} else listening_addresses(port)
            ours = []
        assert bound == {"127.0.0.1"}
        for addr in ours:  # this machine's own non-loopback addresses: a connect only, nothing sent
            with socket.socket() as s:
                s.settimeout(5)
                assert s.connect_ex((addr, port)) != 0, f"the UI answers on {addr}:{port}"
        assert _http_status(port, f"127.0.0.1:{port}") == 200
        assert _http_status(port, f"localhost:{port}") == 200
        for foreign in ("evil.example", f"evil.example:{port}", f"192.168.1.5:{port}", f"localhost:{port + 1}"):
            assert _http_status(port, foreign) == 403, foreign
    finally:
        stop(proc)
    assert proc.returncode is not None


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
    "`apt-get install chromium chromium-driver` (.ci/run does)",
)
def test_ui_shows_both_runs_and_their_loss_charts(tmp_path, mlflow_store):
    import mlflow
    from test_train import random_faces

    from autoswap import train as T
    from autoswap.config import parse

    # ---- a project store with two real trainings, at two learning rates
    faces = tmp_path / "faces"
    random_faces(faces)
    runs = {}
    for lr in ("1.0e-3", "3.0e-3"):
        out = tmp_path / f"lr{lr}"
        s = parse(tiny_raw(out, data={"faces_dir": str(faces)},
                           train={"steps": 16, "log_every": 1, "learning_rate": float(lr), "preview_every": 8}))
        T.train(s, metrics_dir=out / "metrics", plots_dir=out / "plots")
        run_id = json.loads((out / "models" / "checkpoints" / "state.json").read_text())["run_id"]
        # train seeds Python's `random`, so MLflow's generated run names repeat; name them for the picture
        runs[run_id] = f"learning_rate {lr}"
        mlflow.MlflowClient().set_tag(run_id, "mlflow.runName", runs[run_id])
    exp_id = mlflow.get_experiment_by_name("autoswap").experiment_id

    proc, base = start_ui(mlflow_store, tmp_path / "ui.log")
    try:
        port = int(base.rsplit(":", 1)[1])
        if os.path.exists("/proc/net/tcp"):  # Linux: the server listens on 127.0.0.1 only
            assert listening_addresses(port) == {"0100007F"}
        browse(base, exp_id, runs, tmp_path)
        if os.environ.get("AUTOSWAP_UI_SCREENSHOT"):  # refresh docs/mlflow_ui.png by hand
            shutil.copyfile(tmp_path / "mlflow_ui.png", os.environ["AUTOSWAP_UI_SCREENSHOT"])
    finally:
        stop(proc)
    assert proc.returncode is not None


def browse(base: str, exp_id: str, runs: dict, out: Path) -> None:
    """Headless Chromium through the UI: the runs, a run's page, the loss charts; a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp(dir=out)}", "--window-size=1500,950"):
        opts.add_argument(flag)
    # the driver is given by path, so Selenium Manager never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    wait = WebDriverWait(driver, 90, poll_frequency=0.3)
    # MLflow 3 opens experiments on GenAI traces unless told (or once clicked) "Model training"
    runs_page = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    try:
        # the experiment's runs: both listed
        driver.get(runs_page)
        for run_id in runs:
            wait.until(lambda d, r=run_id: d.find_elements(By.CSS_SELECTOR, f'a[href*="/runs/{r}"]'))
        assert all(name in driver.find_element(By.TAG_NAME, "body").text for name in runs.values())

        # a run's page: its parameters and metrics
        run_id = next(iter(runs))
        driver.get(f"{base}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning")
        wait.until(lambda d: "train.learning_rate" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "loss_a" in body and "finished" in body.lower()

        # the chart view: loss_a drawn for both runs, one line each, a point per logged step
        driver.get(f"{runs_page}&compareRunsMode=CHART")

        def cards(d):
            return d.find_elements(By.CSS_SELECTOR, '[data-testid="experiment-view-compare-runs-card"]')

        def loss_a_lines(d):
            for card in cards(d):
                if card.text.split("\n", 1)[0].strip() == "loss_a":
                    # plotly draws each line twice (the line, and a copy for hovering)
                    paths = {p.get_attribute("d") or "" for p in card.find_elements(By.CSS_SELECTOR, "path.js-line")}
                    paths = sorted(p for p in paths if p.count("L") >= 10)
                    return paths if len(paths) >= 2 else None
            return None

        lines = wait.until(loss_a_lines)
        assert len(lines) == 2  # two learning rates, two curves

        # the picture for docs/EXPERIMENTS_AND_MLFLOW.md: the loss charts only, the assistant side panel closed
        for b in driver.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
            if b.is_displayed():
                b.click()
        search = driver.find_elements(By.CSS_SELECTOR, 'input[placeholder="Search metric charts"]')
        if search:
            search[0].send_keys("loss")
            wait.until(lambda d: cards(d) and all(c.text.startswith("loss") for c in cards(d)))
        wait.until(loss_a_lines)
        time.sleep(1)  # let the charts finish their transition
        shot = out / "mlflow_ui.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except Exception:
        driver.save_screenshot(str(out / "failure.png"))  # what the browser showed, for the log
        (out / "failure.txt").write_text(driver.current_url + "\n" + driver.find_element(By.TAG_NAME, "body").text)
        raise
    finally:
        driver.quit()
