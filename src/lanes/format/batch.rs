//! Batches (`batch = { ... }`): the request of many events. The standard format sends a
//! JSON array of standard bodies, each with its own webhook id in `"id"`; CloudEvents a
//! batch (`application/cloudevents-batch+json`, an array of structured events); a template
//! renders once over `events`, the list of the events as a template sees one, with the
//! batch's `id`.
//!
//! An event that cannot be shaped (a template fails on its values) is refused on its
//! own: the others go out without it.

use super::*;

pub const CLOUDEVENTS_BATCH_JSON: &str = "application/cloudevents-batch+json";

/// The request of a batch, and which of its events it carries.
pub struct Batch<'a> {
    /// The batch's webhook id, made by the caller from the ids of the events it carries,
    /// and its request; none when every event was refused.
    pub request: Option<(String, Request<'a>)>,
    /// Indexes (into the events given) of the events in the request, in order.
    pub sent: Vec<usize>,
    /// Events refused, with why.
    pub refused: Vec<(usize, String)>,
    /// The template's body over all of them passed `max_body_bytes`: send them in
    /// smaller requests (nothing else is set).
    pub too_big: bool,
}

impl Formatter {
    /// The request for the events `(id, standard body)`, in order. `batch_id` makes the
    /// request's webhook id from the ids of the events it carries.
    pub fn format_batch<'a>(
        &'a self,
        events: &[(&str, &[u8])],
        batch_id: &dyn Fn(&[&str]) -> String,
    ) -> Batch<'a> {
        let (env, mut refused) = match &self.kind {
            Kind::Template { env, .. } => (env, Vec::new()),
            _ => return self.array(events, batch_id),
        };
        let all: Vec<usize> = (0..events.len()).collect();
        let mut sent = all.clone();
        let mut rendered = self.render_batch(env, events, &all, batch_id);
        if matches!(&rendered, Err(e) if events.len() > 1 && over_body_limit(e)) {
            return Batch {
                request: None,
                sent: Vec::new(),
                refused,
                too_big: true,
            };
        }
        if rendered.is_err() && events.len() > 1 {
            // Find the events the template fails on, alone; the rest go without them.
            sent.clear();
            for i in all {
                match self.render_batch(env, events, &[i], batch_id) {
                    Ok(_) => sent.push(i),
                    Err(e) => refused.push((i, e)),
                }
            }
            rendered = self.render_batch(env, events, &sent, batch_id);
        }
        match rendered {
            Ok(request) if !sent.is_empty() => Batch {
                request: Some(request),
                sent,
                refused,
                too_big: false,
            },
            Ok(_) => Batch {
                request: None,
                sent,
                refused,
                too_big: false,
            },
            Err(e) => {
                refused.extend(sent.drain(..).map(|i| (i, e.clone())));
                refused.sort_by_key(|(i, _)| *i);
                Batch {
                    request: None,
                    sent,
                    refused,
                    too_big: false,
                }
            }
        }
    }

    /// Standard and CloudEvents: a JSON array of the events' bodies.
    fn array<'a>(&'a self, events: &[(&str, &[u8])], batch_id: &dyn Fn(&[&str]) -> String) -> Batch<'a> {
        let size: usize = events.iter().map(|(id, b)| b.len() + id.len() + 16).sum();
        let mut body = Vec::with_capacity(size + 2);
        body.push(b'[');
        let (mut sent, mut refused) = (Vec::new(), Vec::new());
        for (i, (id, event)) in events.iter().enumerate() {
            let mark = body.len();
            if !sent.is_empty() {
                body.push(b',');
            }
            let shaped = match &self.kind {
                Kind::CloudEvents { source, type_prefix } => {
                    cloud_event(id, event, source, type_prefix.as_deref()).map(|e| body.extend_from_slice(&e))
                }
                _ => standard_with_id(&mut body, id, event),
            };
            match shaped {
                Ok(()) => sent.push(i),
                Err(e) => {
                    body.truncate(mark);
                    refused.push((i, e));
                }
            }
        }
        body.push(b']');
        if sent.is_empty() {
            return Batch {
                request: None,
                sent,
                refused,
                too_big: false,
            };
        }
        let ids: Vec<&str> = sent.iter().map(|&i| events[i].0).collect();
        let content_type = match (&self.kind, &self.content_type) {
            (Kind::CloudEvents { .. }, Part::Fixed(c)) if c == CLOUDEVENTS_JSON => {
                Cow::Borrowed(CLOUDEVENTS_BATCH_JSON)
            }
            (_, part) => self.fixed(part),
        };
        Batch {
            request: Some((
                batch_id(&ids),
                Request {
                    method: self.fixed(&self.method),
                    content_type,
                    headers: Vec::new(),
                    body: Cow::Owned(body),
                },
            )),
            sent,
            refused,
            too_big: false,
        }
    }

    /// The templates rendered over the events at `which`: `events` and the batch's `id`.
    fn render_batch<'a>(
        &'a self,
        env: &Environment<'static>,
        events: &[(&str, &[u8])],
        which: &[usize],
        batch_id: &dyn Fn(&[&str]) -> String,
    ) -> Result<(String, Request<'a>), String> {
        let mut list = Vec::with_capacity(which.len());
        let mut ids = Vec::with_capacity(which.len());
        for &i in which {
            let (id, body) = events[i];
            list.push(doc::context(id, doc::index(body)?));
            ids.push(id);
        }
        let id = batch_id(&ids);
        let ctx = minijinja::context! { id => id.clone(), events => list };
        let request = self.render(env, None, &|| ctx.clone())?;
        Ok((id, request))
    }
}

/// Appends the standard body `event` with `"id": id` as its first field.
fn standard_with_id(out: &mut Vec<u8>, id: &str, event: &[u8]) -> Result<(), String> {
    let start = event.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start.filter(|&s| event[s] == b'{') else {
        return Err("the stored body is not a walhook event: not an object".into());
    };
    let rest = &event[start + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    out.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut *out, id).map_err(|e| e.to_string())?;
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Ok(())
}
