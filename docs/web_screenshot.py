"""Screenshot of `python -m dualtrain.web` with a digit drawn and its class probabilities.

Produces `docs/images/web_digits.png`: the page served by `python -m dualtrain.web` for the cnn
recipe's ONNX export, in headless Chromium, after a 3 was drawn on its pad with mouse events; the
model ran in the browser (onnxruntime-web, WebAssembly).

Steps:

1. Unless `--run` names a directory with an ONNX export, train the cnn recipe on the digits
   (`python -m dualtrain recipe=cnn backend=torch trainer.max_epochs=<N> hydra.run.dir=<tmp>/run`)
   and export it (`python -m dualtrain mode=export checkpoint.path=<tmp>/run
   export.formats=[onnx] hydra.run.dir=<tmp>/run-onnx`), about half a minute on a 2-core CPU.
2. Start `python -m dualtrain.web <run> --port <free>` (it installs onnxruntime-web with npm on
   its first start), open the page in headless Chromium, draw, wait for the prediction.
3. Take the screenshot, print the page's timings, stop the browser and the server.

Needs Debian's Chromium (`apt-get install chromium`, at /usr/bin/chromium) and the test
dependencies (the browser driver is the one of tests/test_web.py); this script installs nothing.
It writes only `--out` and a temporary directory, removed at the end.

Usage, from the repository root:

    python docs/web_screenshot.py [--run DIR] [--out docs/images/web_digits.png] [--epochs 5]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import run_cli  # noqa: E402
from tests.test_web import CHROMIUM, Chromium, draw, serving  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "docs" / "images" / "web_digits.png"
WINDOW_SIZE = (1000, 790)


def three() -> list[list[tuple[float, float]]]:
    """A 3: two bowls open to the left, drawn in one stroke from the top left."""
    upper = [(0.5 + 0.2 * math.sin(t), 0.32 - 0.16 * math.cos(t))
             for t in (math.pi * (-0.45 + 1.45 * i / 24) for i in range(25))]  # fmt: skip
    lower = [(0.5 + 0.22 * math.sin(t), 0.66 - 0.18 * math.cos(t))
             for t in (math.pi * (0.0 + 1.35 * i / 24) for i in range(25))]  # fmt: skip
    return [upper + lower]


def train_and_export(root: Path, epochs: int) -> Path:
    run = root / "run"
    for args in (
        ["recipe=cnn", "backend=torch", f"trainer.max_epochs={epochs}", "logger.progress=false",
         f"hydra.run.dir={run}"],
        ["mode=export", f"checkpoint.path={run}", "export.formats=[onnx]",
         f"hydra.run.dir={run}-onnx"],
    ):  # fmt: skip
        done = run_cli(*args)
        if done.returncode != 0:
            sys.exit(f"web_screenshot: {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return Path(f"{run}-onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a directory with export/onnx/model.onnx")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        sys.exit(f"web_screenshot: needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_and_export(Path(tmp), args.epochs)
        with serving(run) as url:
            browser = Chromium(CHROMIUM, Path(tmp) / "profile", size=WINDOW_SIZE)
            try:
                browser.goto(url)
                browser.wait_for("window.modelReady || window.pageError")
                draw(browser, three())
                browser.wait_for("window.predictionCount >= 1 || window.pageError")
                if browser.evaluate("window.pageError"):
                    sys.exit(f"web_screenshot: the page failed: {browser.evaluate('pageError')}")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                browser.screenshot(args.out)
                result = browser.evaluate("window.lastResult.outputs.logits")
                timing = browser.evaluate("[window.loadMs, window.sessionMs]")
                # Inference alone, the model warm: the median of 20 calls on the same pixels.
                median = browser.evaluate("""(async () => {
                    const times = [];
                    for (let i = 0; i < 20; i += 1) {
                      const n = window.predictionCount;
                      document.querySelector('input[type=checkbox]').dispatchEvent(
                        new Event('change'));
                      while (window.predictionCount === n) await new Promise(
                        (r) => setTimeout(r, 1));
                      times.push(window.lastResult.inferenceMs);
                    }
                    times.sort((a, b) => a - b);
                    return times[10];
                })()""")
            finally:
                browser.close()
    print(f"wrote {args.out}: predicted {result['label']} "
          f"({100 * result['probabilities'][result['predicted']]:.1f}%); page ready "
          f"{timing[0]:.0f} ms after opening (model {timing[1]:.0f} ms); inference "
          f"{median:.2f} ms (median of 20)")  # fmt: skip


if __name__ == "__main__":
    main()
