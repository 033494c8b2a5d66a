//! HTTP client of the REST API. Turns transport failures and API error bodies into one-line
//! errors that name the control plane's address.

use anyhow::anyhow;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client that sends `token` as `Authorization: Bearer` on every request.
    pub fn with_token(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the configured user token is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .map_err(|e| anyhow!("cannot build HTTP client: {e}"))?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The client of the current context of `config`, with its authentication.
    pub fn of(config: &crate::config::CtlConfig) -> anyhow::Result<Self> {
        let auth = config.current_auth()?;
        Self::with_token(&config.current_url()?, auth.token())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                anyhow!(
                    "{url} did not answer with JSON (HTTP {status}); is {} a kuma-cp API address?",
                    self.base
                )
            })?
        };
        Ok((status, value))
    }

    fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        if e.is_connect() {
            anyhow!(
                "could not connect to the control plane at {}: {cause} (is kuma-cp running there? see kumactl config control-planes add)",
                self.base
            )
        } else if e.is_timeout() {
            anyhow!("the control plane at {} did not answer in time", self.base)
        } else {
            anyhow!(
                "request to the control plane at {} failed: {cause}",
                self.base
            )
        }
    }

    /// Sends a request and returns the JSON body of a 2xx answer; anything else is an error
    /// carrying the API's own explanation.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.send(method, path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(anyhow!(describe_error(status, &value)))
        }
    }

    /// POSTs JSON and returns the answer as text (tokens).
    pub async fn post_text(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        self.text(self.http.post(&url).json(body), &url).await
    }

    /// GETs a text answer (a proxy's stats or clusters).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        self.text(self.http.get(&url), &url).await
    }

    async fn text(&self, request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<String> {
        let resp = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?;
        if status.is_success() {
            return Ok(text);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Err(anyhow!(describe_error(status, &value)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Fetches every page of a list.
    pub async fn list_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut next = Some(format!("{path}?size=1000"));
        while let Some(p) = next.take() {
            let page = self.get(&p).await?;
            if let Some(arr) = page["items"].as_array() {
                items.extend(arr.iter().cloned());
            }
            next = page["next"].as_str().map(str::to_string);
        }
        Ok(items)
    }
}

/// One line from an API error body: `details: field: message; field: message`.
pub fn describe_error(status: StatusCode, body: &Value) -> String {
    let details = body["details"]
        .as_str()
        .or(body["title"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let causes: Vec<String> = body["causes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let field = c["field"].as_str().unwrap_or("");
                    let msg = c["message"].as_str().unwrap_or("");
                    if field.is_empty() {
                        msg.to_string()
                    } else {
                        format!("{field}: {msg}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if causes.is_empty() {
        details
    } else {
        format!("{details}: {}", causes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write refused because of the control plane's mode (405) shows Kuma's message as is.
    #[test]
    fn a_refusal_by_mode_shows_the_apis_message() {
        let details = "On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify the rest of the resource on the global control plane.";
        let body = serde_json::json!({"title": "Method not allowed", "details": details});
        assert_eq!(
            describe_error(StatusCode::METHOD_NOT_ALLOWED, &body),
            details
        );
        let invalid = serde_json::json!({
            "title": "Could not process a resource",
            "details": "Resource is not valid",
            "causes": [{"field": "name", "message": "cannot be empty"}],
        });
        assert_eq!(
            describe_error(StatusCode::BAD_REQUEST, &invalid),
            "Resource is not valid: name: cannot be empty"
        );
        assert_eq!(
            describe_error(StatusCode::BAD_GATEWAY, &Value::Null),
            "HTTP 502 Bad Gateway"
        );
    }
}
