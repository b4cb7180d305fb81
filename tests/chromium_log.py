"""What a page loaded in Chromium asked for, read from its DevTools performance log (the
driver needs `goog:loggingPrefs` {"performance": "ALL"})."""

from __future__ import annotations

import json

from selenium import webdriver


def network_requests(driver: webdriver.Chrome) -> tuple[dict[str, str], list[str]]:
    """Every URL requested since the log was last read (by request id), and those the
    browser blocked before sending (`Network.loadingFailed` with a `blockedReason`)."""
    requested: dict[str, str] = {}
    blocked = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            requested[params["requestId"]] = params["request"]["url"]
        elif event["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.append(requested.get(params["requestId"], "?"))
    return requested, blocked
