"""SMTP submission of a rendered mail (the ``email`` format) with aiosmtplib.

Called by :func:`detector.delivery.channels.deliver` instead of an HTTP POST, so retries, path
holds, dead letters and agent alerts are the outbox worker's as for every webhook. STARTTLS
(required when ``starttls: true``, the default) or implicit TLS (``tls: true``, port 465), then
AUTH when a username is set. The answer is judged like this:

- delivered: the server accepted the message for at least one recipient;
- a 5xx answer to the message itself (``DATA``) after a good session: refused, the row's own
  fault, dead-lettered at once (the session proved the path works);
- a 5xx to the login, the sender or every recipient: the path's fault (every mail would fail): the
  webhook is held and reported failing at once;
- 4xx, connection errors, timeouts, TLS errors: transient, retried.

The password never appears in an error text (it is redacted like every webhook secret).
"""

from __future__ import annotations

import ssl
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING, Any

from detector.delivery.common import RenderedRequest, clip
from detector.delivery.mail import smtp_url
from detector.delivery.transport import Outcome, redact
from detector.model import SmtpConfig, WebhookConfig

if TYPE_CHECKING:  # imported where a mail is sent: an agent without email never loads it
    import aiosmtplib

ANSWER_CHARS = 200


def _tls_context(smtp: SmtpConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file)


async def send(webhook: WebhookConfig, request: RenderedRequest) -> Outcome:
    """Hand one rendered mail to the webhook's SMTP server; never raises for a delivery
    problem."""
    import aiosmtplib  # noqa: PLC0415 - see the imports

    smtp = webhook.smtp
    assert smtp is not None and webhook.mail_from is not None
    where = smtp_url(smtp)

    def fail(error: str, **kw: Any) -> Outcome:
        return Outcome(ok=False, error=redact(error, webhook), **kw)

    sender = parseaddr(webhook.mail_from)[1] or webhook.mail_from
    recipients = [a for _, a in getaddresses(list(webhook.mail_to)) if a]
    try:
        errors, answer = await aiosmtplib.send(
            request.body(),
            sender=sender,
            recipients=recipients,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            use_tls=smtp.tls,
            start_tls=smtp.starttls if not smtp.tls else False,
            tls_context=_tls_context(smtp) if (smtp.tls or smtp.starttls) else None,
            timeout=webhook.timeout.total_seconds(),
        )
    except aiosmtplib.SMTPRecipientsRefused as e:
        codes = [r.code for r in e.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in e.recipients)
        permanent = all(500 <= c < 600 for c in codes)
        return fail(
            f"{where}: every recipient refused: {clip(text, ANSWER_CHARS)}",
            permanent=permanent,
            fault="path" if permanent else None,
        )
    except aiosmtplib.SMTPResponseException as e:
        permanent = 500 <= e.code < 600
        step = _step(e)
        fault = ("row" if step == "the message" else "path") if permanent else None
        return fail(
            f"{where}: {step} refused: {e.code} {clip(' '.join(e.message.split()), ANSWER_CHARS)}",
            permanent=permanent,
            fault=fault,
            definite=fault == "row",
        )
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError) as e:
        return fail(f"cannot connect to {where}: {e}", path_down=True)
    except aiosmtplib.SMTPTimeoutError as e:
        return fail(f"{where} timed out: {e}", path_down=True)
    except aiosmtplib.SMTPServerDisconnected as e:
        return fail(f"{where}: the server disconnected: {e}", path_down=True)
    except aiosmtplib.SMTPException as e:  # STARTTLS or AUTH not offered, …
        return fail(f"{where}: {type(e).__name__}: {e}", path_down=True)
    except ssl.SSLError as e:
        return fail(f"{where}: TLS failed: {e.reason or e}", path_down=True)
    except OSError as e:
        return fail(f"cannot connect to {where}: {e.strerror or type(e).__name__}", path_down=True)
    refused = "; ".join(f"{a}: {r.code} {r.message}" for a, r in errors.items())
    text = " ".join(answer.split())
    if refused:
        text += f" (refused: {clip(refused, ANSWER_CHARS)})"
    return Outcome(ok=True, body=redact(text, webhook))


def _step(e: aiosmtplib.SMTPResponseException) -> str:
    import aiosmtplib  # noqa: PLC0415 - see the imports

    if isinstance(e, aiosmtplib.SMTPAuthenticationError):
        return "the login"
    if isinstance(e, aiosmtplib.SMTPSenderRefused):
        return "the sender"
    if isinstance(e, aiosmtplib.SMTPDataError):
        return "the message"
    return "the session"
