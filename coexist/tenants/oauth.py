"""OAuth 2.0 access tokens for IMAP XOAUTH2, obtained and refreshed by coexist.

An access token lasts about an hour (Microsoft identity platform: 60-90 minutes; Google:
`expires_in` 3599), shorter than a long pass. A side with `auth = "xoauth2"` whose vault
holds the side's OAuth client (`coexist credentials set --oauth-app`, the vault entry
`vault.OAUTH_APP_ENTRY`: client id as its login, the rest as its secret) gets its tokens
from the client's token endpoint, one of two grants:

- `client_credentials` (Microsoft 365): the app's own token, for every mailbox the app was
  given (Exchange Online: New-ServicePrincipal, Add-MailboxPermission). POST to
  https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token with client_id,
  client_secret, grant_type=client_credentials and scope
  https://outlook.office365.com/.default; the XOAUTH2 user is the mailbox ("Authenticate
  an IMAP, POP or SMTP connection using OAuth", client credentials grant flow). One token
  per side, shared by its users.
- `refresh_token` (Google): each user's refresh token (the user's vault secret), POSTed to
  https://oauth2.googleapis.com/token with client_id, client_secret,
  grant_type=refresh_token (RFC 6749 section 6; Google "Using OAuth 2.0 for Web Server
  Applications", Refreshing an access token). One token per user.

A token is taken anew when it has less than REFRESH_MARGIN_S (or half its lifetime, if
shorter) left (`TokenSource.token`); a connection logged in with it logs in again then,
between two commands (`TokenSource.fresh`, `tenants.imap.ImapSession.due`); and once
more when the IMAP server refused it (`refresh`: revoked, or its clock disagrees;
`tenants.imap.ImapSession.open` reconnects with it). Tokens live in memory only. Secrets
never reach a message: the token endpoint's error text is redacted (`errors.redact`), and
client secret and refresh token are fields kept out of every repr.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from coexist.errors import AuthenticationError, TLSError, TransientError, Unreachable

CLIENT_CREDENTIALS, REFRESH_TOKEN = "client_credentials", "refresh_token"
GRANTS = (CLIENT_CREDENTIALS, REFRESH_TOKEN)
# Microsoft 365 IMAP's scope for the client credentials flow (the `.default` of Exchange
# Online's resource): "Authenticate an IMAP, POP or SMTP connection using OAuth".
M365_IMAP_SCOPE = "https://outlook.office365.com/.default"
# A token with less than this left is replaced before a login: a pass's logins come at any
# moment, and a connection opened with a token about to expire would not outlive it on a
# server that ends sessions at expiry (Exchange Online: "Session invalidated -
# AccessTokenExpired").
REFRESH_MARGIN_S = 300
TIMEOUT_S = 30.0
SERVICE = "oauth2"


@dataclass(frozen=True)
class OAuthApp:
    """A side's OAuth client: where and how its tokens are obtained."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    grant: str = CLIENT_CREDENTIALS
    scope: str | None = None
    ca_file: str | None = None  # the token endpoint's CA bundle, where it is not public

    def secret(self) -> str:
        """The vault secret of this client (its login there is the client id)."""
        return json.dumps(
            {
                "token_url": self.token_url,
                "client_secret": self.client_secret,
                "grant": self.grant,
                "scope": self.scope,
                "ca_file": self.ca_file,
            },
            sort_keys=True,
        )

    @classmethod
    def from_vault(cls, client_id: str, secret: str) -> OAuthApp:
        data = json.loads(secret)
        return cls(
            str(data["token_url"]),
            client_id,
            str(data["client_secret"]),
            str(data.get("grant") or CLIENT_CREDENTIALS),
            data.get("scope") or None,
            data.get("ca_file") or None,
        )


class TokenSource:
    """Access tokens of one OAuth client (and, for the refresh_token grant, one user),
    kept in memory until REFRESH_MARGIN_S before they expire. Thread-safe: logins run in
    worker threads."""

    def __init__(
        self,
        app: OAuthApp,
        who: str,
        *,
        refresh_token: str | None = None,
        next_step: str = "",
        margin_s: float = REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.who = who  # whose tokens, as errors name it: a user's address, or "the source"
        self._refresh_token = refresh_token
        self._next_step = next_step
        self._margin = margin_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._lifetime = 0.0
        self.fetched = 0  # tokens obtained (a test's and a log's figure)

    @property
    def refresh_token(self) -> str | None:
        return self._refresh_token

    def __repr__(self) -> str:
        return f"TokenSource({self.app.token_url!r}, {self.who!r})"

    def token(self) -> str:
        """A token with more than the margin left: the one held, or a new one."""
        with self._lock:
            if self._token is None or not self._held_fresh():
                self._fetch()
            assert self._token is not None
            return self._token

    def fresh(self, token: str) -> bool:
        """Whether `token` is the one held and has more than the margin left: what a
        connection logged in with it asks between commands (`tenants.imap.ImapSession.due`),
        so that it logs in again before the token expires, at the moment a new login would
        get a new token."""
        with self._lock:
            return token == self._token and self._held_fresh()

    def _held_fresh(self) -> bool:
        # A token that lives less than twice the margin is replaced at half its life,
        # else it would be replaced at every login, the one just refreshed too.
        margin = min(self._margin, self._lifetime / 2)
        return self._clock() < self._expires - margin

    def refresh(self) -> None:
        """Replace the token held (the server refused it)."""
        with self._lock:
            self._fetch()

    def _fetch(self) -> None:
        app = self.app
        form = {"grant_type": app.grant, "client_id": app.client_id}
        form["client_secret"] = app.client_secret
        if app.grant == REFRESH_TOKEN:
            form["refresh_token"] = self._refresh_token or ""
        if app.scope:
            form["scope"] = app.scope
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=app.ca_file) if app.ca_file else True
        )
        try:
            answer = httpx.post(app.token_url, data=form, verify=verify, timeout=TIMEOUT_S)
        except httpx.ConnectError as exc:
            if isinstance(exc.__context__, ssl.SSLError) or "CERTIFICATE" in str(exc).upper():
                raise TLSError(
                    f"the OAuth token endpoint {app.token_url} is not trusted: {exc}",
                    service=SERVICE,
                    endpoint=app.token_url,
                    cause="certificate not trusted",
                    next_step="give its CA bundle: coexist credentials set --oauth-app "
                    "... --ca-file FILE",
                ) from exc
            raise Unreachable(
                f"the OAuth token endpoint {app.token_url} cannot be reached: {exc}",
                service=SERVICE,
                endpoint=app.token_url,
                cause="no connection",
                next_step="check the token URL and the network path to it",
            ) from exc
        except httpx.HTTPError as exc:
            raise TransientError(
                f"the OAuth token endpoint {app.token_url} did not answer: {exc}",
                service=SERVICE,
            ) from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TransientError(
                f"the OAuth token endpoint {app.token_url} answered {answer.status_code}",
                service=SERVICE,
            )
        body = _json(answer)
        token = body.get("access_token")
        if answer.status_code != 200 or not isinstance(token, str) or not token:
            error = str(body.get("error") or f"HTTP {answer.status_code}")
            said = str(body.get("error_description") or "").split("\r\n")[0]
            raise AuthenticationError(
                f"the OAuth token endpoint {app.token_url} gave no access token for "
                f"{self.who} (client {app.client_id}, {app.grant}): {error}"
                + (f": {said}" if said else ""),
                service=SERVICE,
                code=error,
                user=self.who,
                next_step=self._next_step or None,
            )
        try:
            lifetime = float(str(body.get("expires_in", 3600)))
        except ValueError:
            lifetime = 3600.0
        self._token = token
        self._lifetime = lifetime
        self._expires = self._clock() + lifetime
        self.fetched += 1


def _json(answer: httpx.Response) -> dict[str, object]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
