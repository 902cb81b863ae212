//! NATS JetStream subscribers (`kind = "nats"`): each event is published to a subject
//! rendered from the event, with `Nats-Msg-Id` set to its webhook id (the stream drops a
//! duplicate within its window, so a retry after a crash is stored once), and it counts
//! as delivered when the stream acknowledges it. The Standard Webhooks headers go along
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so consumers can verify a
//! message as a webhook receiver would. Lanes, order, spill, retries and dead letters are
//! the same as for webhooks: this is one more `Sender`.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use super::deliver::{unix_now, Attempt, Failure};
use super::limit::Limiter;
use super::retry::{Policy, Verdict};
use super::sign::Signer;
use super::store::Sender;
use crate::config::{Problem, Subscriber};

/// The longest subject accepted (NATS has no hard limit; far above any sane one).
const MAX_SUBJECT: usize = 1024;

pub struct NatsTarget {
    url: String,
    name: String,
    credentials: Option<String>,
    tls: Option<crate::config::SubscriberTls>,
    timeout: Duration,
    subject: minijinja::Environment<'static>,
    signer: Signer,
    policy: Policy,
    limiter: Option<Limiter>,
    /// Connected at the first attempt; the client reconnects by itself after that.
    js: OnceCell<(async_nats::Client, async_nats::jetstream::Context)>,
}

impl NatsTarget {
    /// The target of NATS subscriber `index`; every problem at once, with its key path.
    pub fn new(sub: &Subscriber, index: usize) -> Result<NatsTarget, Vec<Problem>> {
        let key = |k: &str| format!("subscribers[{index}].{k}");
        let mut problems = Vec::new();
        let signer = Signer::new(sub, index).map_err(|p| problems.extend(p)).ok();
        let mut subject = minijinja::Environment::new();
        subject.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let text = sub.subject.clone().unwrap_or_default();
        if !text.contains('{') {
            if let Err(e) = check_subject(&text) {
                problems.push(Problem::new(key("subject"), e));
            }
        }
        if let Err(e) = subject.add_template_owned("subject", text) {
            problems.push(Problem::new(key("subject"), format!("not a template: {e}")));
        }
        let limiter = Limiter::of(sub)
            .map_err(|e| problems.push(Problem::new(key("rate_limit"), e)))
            .ok()
            .flatten();
        for (what, path) in [
            ("credentials", sub.credentials.as_deref()),
            ("tls.ca", sub.tls.as_ref().and_then(|t| t.ca.as_deref())),
            ("tls.cert", sub.tls.as_ref().and_then(|t| t.cert.as_deref())),
            ("tls.key", sub.tls.as_ref().and_then(|t| t.key.as_deref())),
        ] {
            if let Some(p) = path {
                if let Err(e) = std::fs::metadata(p) {
                    problems.push(Problem::new(key(what), format!("cannot read {p}: {e}")));
                }
            }
        }
        match (signer, problems.is_empty()) {
            (Some(signer), true) => Ok(NatsTarget {
                url: sub.url.clone(),
                name: sub.name.clone(),
                credentials: sub.credentials.clone(),
                tls: sub.tls.clone(),
                timeout: sub.timeout,
                subject,
                signer,
                policy: Policy::new(sub),
                limiter,
                js: OnceCell::new(),
            }),
            _ => Err(problems),
        }
    }

    /// The subject of an event with standard body `body`.
    pub fn subject(&self, id: &str, body: &[u8]) -> Result<String, String> {
        let ctx = super::format::template_context(id, body)?;
        let subject = self
            .subject
            .get_template("subject")
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("the subject template failed: {e}"))?;
        check_subject(&subject)?;
        Ok(subject)
    }

    /// The server's URL without its user name and password, for messages.
    fn shown_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                let _ = u.set_password(None);
                let _ = u.set_username("");
                u.to_string()
            }
            Err(_) => "the NATS server".into(),
        }
    }

    async fn connect(&self) -> Result<(async_nats::Client, async_nats::jetstream::Context), String> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("walhook/{}", self.name))
            .connection_timeout(self.timeout.min(Duration::from_secs(10)));
        if let Some(creds) = &self.credentials {
            opts = opts
                .credentials_file(creds)
                .await
                .map_err(|e| format!("cannot use the credentials {creds}: {e}"))?;
        }
        if let Some(tls) = &self.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca {
                opts = opts.add_root_certificates(ca.into());
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                opts = opts.add_client_certificate(cert.into(), key.into());
            }
        }
        let client = opts
            .connect(self.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.shown_url()))?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(self.timeout);
        Ok((client, js))
    }

    /// Whether a JetStream stream captures the subject event `id` would be published to,
    /// publishing nothing (`walhook check --ping`: consumers of the stream never see a
    /// ping): the stream's name, or what is wrong.
    pub async fn probe(&self, id: &str, body: &[u8]) -> Result<String, String> {
        let subject = self.subject(id, body)?;
        let (_, js) = self.js.get_or_try_init(|| self.connect()).await?;
        match tokio::time::timeout(self.timeout, js.stream_by_subject(subject.as_str())).await {
            Ok(Ok(stream)) => Ok(format!("JetStream stream {stream} captures {subject}")),
            Ok(Err(e)) => Err(format!(
                "no JetStream stream captures {subject} ({e}): every publish would fail; add the subject to a stream"
            )),
            Err(_) => Err(format!("no answer from JetStream within {:?}", self.timeout)),
        }
    }

    /// Publishes event `id` once and waits for the stream's ack.
    pub async fn send(&self, id: &str, body: &[u8]) -> (Attempt, Duration) {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.publish(id, body)).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(failure)) => Attempt::Failed(failure),
            Err(_) => Attempt::Failed(Failure::unanswered(format!(
                "no ack from JetStream within {:?}",
                self.timeout
            ))),
        };
        (outcome, started.elapsed())
    }

    async fn publish(&self, id: &str, body: &[u8]) -> Result<(), Failure> {
        let subject = self.subject(id, body).map_err(|e| Failure {
            unshapeable: true,
            ..Failure::unanswered(format!("cannot shape the message: {e}"))
        })?;
        let (client, js) = self
            .js
            .get_or_try_init(|| self.connect())
            .await
            .map_err(Failure::unanswered)?;
        // While the client reconnects it queues what it is given and sends it later, even
        // after this attempt gave up: a retry past the stream's duplicate window would
        // then store the event twice. Not connected: the attempt fails now.
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(Failure::unanswered(format!(
                "not connected to {} (the client is reconnecting)",
                self.shown_url()
            )));
        }
        let ts = unix_now();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("webhook-id", id);
        headers.insert("webhook-timestamp", ts.to_string().as_str());
        headers.insert("webhook-signature", self.signer.header(id, ts, body).as_str());
        headers.insert("Content-Type", "application/json");
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(body))
            .headers(headers)
            .message_id(id);
        let ack = js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| publish_failure(&subject, &e))?;
        let ack = ack.await.map_err(|e| publish_failure(&subject, &e))?;
        if ack.duplicate {
            // Sent before (a retry after a lost ack, or a replay after a restart).
            tracing::debug!(subscriber = %self.name, %id, stream = %ack.stream, "JetStream had this message already");
        }
        Ok(())
    }
}

/// A failed publish, with what to do about it.
fn publish_failure(subject: &str, e: &async_nats::jetstream::context::PublishError) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let hint = match e.kind() {
        K::StreamNotFound => format!(
            ": no JetStream stream takes subject {subject:?}; add one whose subjects cover it \
             (nats stream add EVENTS --subjects 'pim.>')"
        ),
        K::MaxPayloadExceeded => {
            // This event's own problem, not the server's: dead after its retries.
            return Failure {
                unshapeable: true,
                ..Failure::unanswered(format!(
                    "JetStream publish to {subject:?} failed: {e}: the event is larger than the server's max_payload"
                ))
            };
        }
        _ => String::new(),
    };
    Failure::unanswered(format!("JetStream publish to {subject:?} failed: {e}{hint}"))
}

/// A subject NATS takes to publish on: dot-separated non-empty tokens without spaces or
/// wildcards.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return Err(format!("the subject is empty or over {MAX_SUBJECT} bytes"));
    }
    if subject.starts_with('$') {
        return Err(format!(
            "{subject:?} starts with '$', which NATS keeps for its own subjects"
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!(
            "{subject:?} has an empty token (two dots, or a dot at an end)"
        ));
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
    {
        return Err(format!(
            "{subject:?} holds {c:?}, which a subject to publish on may not"
        ));
    }
    Ok(())
}

impl Sender for NatsTarget {
    fn send<'a>(&'a self, id: &'a str, body: &'a [u8]) -> BoxFuture<'a, (Attempt, Duration)> {
        Box::pin(NatsTarget::send(self, id, body))
    }
    fn verdict(&self, attempts: u32, failure: &Failure) -> Verdict {
        self.policy
            .after_failure(attempts, failure.status, failure.retry_after)
    }
    fn probe_delay(&self, probes: u32) -> Duration {
        self.policy.probe_delay(probes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_come_from_the_event_and_bad_ones_are_refused() {
        let text = "name = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\
                    subject = \"pim.{{ type }}.{{ data.key.id }}\"\nevents = [\"*\"]\n\
                    secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]";
        let sub: Subscriber = toml_sub(text);
        let t = NatsTarget::new(&sub, 0).expect("a target");
        let body = br#"{"type":"price.changed","data":{"key":{"id":42}}}"#;
        assert_eq!(t.subject("evt_1", body).unwrap(), "pim.price.changed.42");
        let e = t
            .subject("evt_1", br#"{"type":"a b","data":{"key":{"id":1}}}"#)
            .unwrap_err();
        assert!(e.contains("' '"), "{e}");
        let e = t
            .subject("evt_1", br#"{"type":"x","data":{"key":{}}}"#)
            .unwrap_err();
        assert!(e.contains("template failed"), "{e}");
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a\tb", "$JS.API.x"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
        assert!(check_subject("pim.price.changed").is_ok());
    }

    fn toml_sub(text: &str) -> Subscriber {
        let text = format!("[source]\nurl = \"postgres://localhost/x\"\n[[events]]\ntable = \"t\"\n[[subscribers]]\n{text}\n");
        let parsed = crate::config::Config::parse(&text, "t", &|_| None).unwrap();
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.config.subscribers[0].clone()
    }
}
