//! The SQS queue, through `aws-sdk-sqs` with the standard AWS configuration
//! chain (region, credentials and `AWS_ENDPOINT_URL` from the environment):
//! receiving, deleting, and keeping held messages invisible.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};

/// SQS refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("SQS {action} on {queue}: {}", DisplayErrorContext(.source.as_ref()))]
pub struct QueueError {
    /// What was attempted.
    pub action: &'static str,
    /// The queue URL.
    pub queue: String,
    /// The SDK's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// Whether the request never got an answer from the service (a network
    /// error or a timeout), as opposed to a refusal.
    pub transient: bool,
}

/// Messages on a queue, as SQS approximates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Visible: waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted or visible again.
    pub in_flight: u64,
}

/// One message received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message id: the same for every delivery of one sent message.
    pub message_id: String,
    /// This delivery's handle, for deleting it or changing its visibility.
    pub receipt: String,
    /// The body as sent.
    pub body: String,
    /// When it was sent (epoch ms), as SQS records it.
    pub sent_ms: Option<i64>,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// A queue by URL.
#[derive(Debug, Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// The most entries SQS takes in one batch request.
pub const MAX_BATCH: usize = 10;

impl Queue {
    /// A client for the queue at `url`, configured from the environment.
    pub async fn from_env(url: &str) -> Self {
        let config = aws_config::load_from_env().await;
        Self {
            client: aws_sdk_sqs::Client::new(&config),
            url: url.to_owned(),
        }
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying client.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    fn error<E, R>(&self, action: &'static str, e: SdkError<E, R>) -> QueueError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let transient = matches!(
            e,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        );
        QueueError {
            action,
            queue: self.url.clone(),
            source: Box::new(e),
            transient,
        }
    }

    /// The queue's visibility timeout.
    ///
    /// # Errors
    /// The queue does not exist or cannot be reached.
    pub async fn visibility_timeout(&self) -> Result<Duration, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", e))?;
        let secs = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(30);
        Ok(Duration::from_secs(secs))
    }

    /// Messages visible or in flight, as SQS approximates them.
    ///
    /// # Errors
    /// The queue cannot be reached.
    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", e))?;
        let attrs: HashMap<QueueAttributeName, String> =
            out.attributes().cloned().unwrap_or_default();
        let get = |a: QueueAttributeName| {
            attrs
                .get(&a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }

    /// Receives up to ten messages, waiting up to `wait` for the first
    /// (long polling); `visibility` overrides the queue's timeout.
    ///
    /// # Errors
    /// SQS refused or could not be reached.
    pub async fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, QueueError> {
        let mut req = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_BATCH as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(v) = visibility {
            req = req.visibility_timeout(v.as_secs() as i32);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.error("ReceiveMessage", e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let attr = |a: MessageSystemAttributeName| {
                    m.attributes.as_ref().and_then(|x| x.get(&a)).cloned()
                };
                Some(Received {
                    sent_ms: attr(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse().ok()),
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    message_id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Deletes up to ten messages by receipt handle; returns the handles
    /// SQS did not delete, each with its reason.
    ///
    /// # Errors
    /// The request as a whole failed: none was deleted.
    pub async fn delete_batch(&self, receipts: &[&str]) -> Result<Vec<Refused>, QueueError> {
        let entries = numbered(receipts)
            .map(|(id, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(r)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("DeleteMessageBatch", e))?;
        Ok(failed(receipts, &out.failed))
    }

    /// Makes up to ten held messages invisible for `visibility` from now;
    /// returns those SQS refused (deleted meanwhile, or expired), each with
    /// its reason.
    ///
    /// # Errors
    /// The request as a whole failed.
    pub async fn extend_batch(
        &self,
        receipts: &[&str],
        visibility: Duration,
    ) -> Result<Vec<Refused>, QueueError> {
        let entries = numbered(receipts)
            .map(|(id, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(r)
                    .visibility_timeout(visibility.as_secs() as i32)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("ChangeMessageVisibilityBatch", e))?;
        Ok(failed(receipts, &out.failed))
    }
}

/// Batch entry ids (the position) with their receipt handles.
fn numbered<'a>(receipts: &'a [&'a str]) -> impl Iterator<Item = (String, &'a str)> + 'a {
    receipts
        .iter()
        .enumerate()
        .map(|(i, r)| (i.to_string(), *r))
}

/// An entry of a batch request that SQS refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The message's receipt handle.
    pub receipt: String,
    /// SQS's code and message.
    pub why: String,
}

/// The receipt handles of a batch's failed entries, each with its reason.
fn failed(receipts: &[&str], entries: &[BatchResultErrorEntry]) -> Vec<Refused> {
    entries
        .iter()
        .filter_map(|f| {
            let i: usize = f.id.parse().ok()?;
            Some(Refused {
                receipt: receipts.get(i)?.to_string(),
                why: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
            })
        })
        .collect()
}
