//! The Redis bus: PUBLISH on one multiplexed connection (pipelined, reconnecting by itself) and a
//! dedicated SUBSCRIBE connection whose task feeds the hub and resubscribes after a loss.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff;
use crate::error::{codes, Error, Result};
use crate::event::Event;
use crate::hub::Hub;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct RedisBus {
    publisher: ConnectionManager,
    channel: String,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(codes::REDIS_UNAVAILABLE, format!("Redis is unavailable: {e}"))
}

impl RedisBus {
    /// Connects both connections and subscribes, or fails within a few seconds.
    pub(super) async fn connect(
        url: &str,
        channel: &str,
        hub: Arc<Hub>,
        connected: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::new(codes::INVALID_OPTION, format!("invalid redisUrl: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let publisher = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(unavailable)?;
        let pubsub = subscribe(&client, channel).await?;
        connected.send_replace(true);
        tokio::spawn(receive(client, channel.to_string(), pubsub, hub, connected, shutdown));
        Ok(Self { publisher, channel: channel.to_string() })
    }

    /// PUBLISHes a batch in one pipeline: one round trip, in order.
    pub(super) async fn publish<'a>(
        &mut self,
        events: impl Iterator<Item = &'a Event>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        for event in events {
            pipe.cmd("PUBLISH").arg(&self.channel).arg(event.frame().as_str()).ignore();
        }
        pipe.query_async::<()>(&mut self.publisher).await.map_err(unavailable)
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> Result<PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(unavailable)
}

/// Feeds the hub from the subscription until shutdown, reconnecting with backoff after a loss.
async fn receive(
    client: redis::Client,
    channel: String,
    first: PubSub,
    hub: Arc<Hub>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut pubsub = Some(first);
    let mut attempt = 0u32;
    loop {
        let Some(conn) = pubsub.take() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
            attempt = attempt.saturating_add(1);
            match subscribe(&client, &channel).await {
                Ok(conn) => {
                    log::info!("bus: Redis subscription restored on {channel}");
                    connected.send_replace(true);
                    attempt = 0;
                    pubsub = Some(conn);
                }
                Err(e) => log::debug!("bus: Redis reconnect attempt {attempt} failed: {e}"),
            }
            continue;
        };
        let mut messages = conn.into_on_message();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = messages.next() => match msg {
                    Some(msg) => match Event::from_json(msg.get_payload_bytes()) {
                        Ok(event) => hub.dispatch(&event).await,
                        Err(e) => log::warn!("bus: ignored a message on {channel}: {}", e.message()),
                    },
                    None => break,
                },
            }
        }
        connected.send_replace(false);
        log::warn!("bus: lost the Redis subscription on {channel}; reconnecting");
    }
}
