#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol (a pipe, no extra packages) for the
dashboard tests that click: opens a page, then runs steps, and prints one JSON result per step.

    cdp.py URL PROFILE_DIR STEPS_JSON

STEPS_JSON is a list of steps, each one of
    {"wait": "JS expression", "timeout_s": 30}   until the expression is truthy (its value)
    {"eval": "JS expression"}                     its value (promises awaited)
Exit status 1, with the reason on stderr, when a wait times out or a step throws.
"""

import json
import os
import subprocess
import sys
import time


class Browser:
    def __init__(self, profile):
        # Chromium reads commands from fd 3 and writes answers to fd 4, NUL-terminated.
        to_chromium_r, self.to_chromium = os.pipe()
        self.from_chromium, from_chromium_w = os.pipe()

        def plumb():
            # Through fresh descriptors: either end may itself be 3 or 4.
            read_end, write_end = os.dup(to_chromium_r), os.dup(from_chromium_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
            ],
            pass_fds=(3, 4, to_chromium_r, from_chromium_w),
            preexec_fn=plumb,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium_r)
        os.close(from_chromium_w)
        self.buffer = b""
        self.next_id = 0

    def call(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chromium, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_chromium, 65536)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def evaluate(browser, session, expression):
    result = browser.call(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
        session,
    )
    if "exceptionDetails" in result:
        raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")


def main():
    url, profile, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    browser = Browser(profile)
    try:
        target = browser.call("Target.createTarget", {"url": url})["targetId"]
        session = browser.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        for step in steps:
            if "wait" in step:
                deadline = time.time() + step.get("timeout_s", 30)
                while True:
                    value = evaluate(browser, session, step["wait"])
                    if value:
                        break
                    if time.time() > deadline:
                        raise RuntimeError(f"timed out waiting for {step['wait']}")
                    time.sleep(0.2)
            else:
                value = evaluate(browser, session, step["eval"])
            print(json.dumps(value), flush=True)
    except Exception as error:  # one line for the test's failure message
        print(f"cdp: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
