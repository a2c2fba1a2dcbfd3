//! Building the application from its settings: the store, the provider, the presets, the
//! routes; binding the listener and keeping the port it really got; and stopping it on
//! SIGTERM or SIGINT without losing an answer.

use crate::config::{CorsOrigins, Settings, StoreKind, UpstreamKind};
use crate::conversation::memory::MemoryStore;
use crate::conversation::postgres::{self, PostgresStore};
use crate::conversation::sqlite::SqliteStore;
use crate::conversation::{Store, StoreError};
use crate::edge::auth::{Keyring, KeysError};
use crate::edge::refusals::{Connection, Refusals};
use crate::edge::requests::resource;
use crate::edge::{self, origin};
use crate::generation::Generations;
use crate::generation::bus::{self, BusError, BusGenerations};
use crate::generation::lane::Unsaved;
use crate::generation::local::LocalGenerations;
use crate::limits::{Limiter, LocalLimiter};
use crate::metrics::Metrics;
use crate::prompts::Presets;
use crate::relays::Relays;
use crate::routes;
use crate::state::AppState;
use crate::upstream::router::Router;
use actix_cors::Cors;
use actix_http::HttpService;
use actix_http::error::DispatchError;
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use std::future::ready;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot open the conversation store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the conversation store at {at}: {source}")]
    Postgres { at: String, source: StoreError },
    #[error("cannot join the bus at {at}: {source}")]
    Bus { at: String, source: BusError },
    #[error("cannot read the prompt presets: {0}")]
    Prompts(std::io::Error),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("bad client keys: {0}")]
    Keys(#[from] KeysError),
    #[error("cannot watch for SIGHUP to reload the keys file: {0}")]
    Hangup(std::io::Error),
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct Application {
    address: SocketAddr,
    server: Server,
    state: web::Data<AppState>,
    /// The listening socket, shared with actix, to refuse connections on SIGTERM.
    listener: socket2::Socket,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let metrics = Metrics::new()?;
        let (store, kind): (Arc<dyn Store>, &str) = match &settings.store {
            StoreKind::Sqlite(path) => {
                log::info!("conversations are stored in {}", path.display());
                // Before the store opens: its writer times commits once this is made.
                metrics.show_store_commits()?;
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(StoreError::from)??;
                (Arc::new(store), "sqlite")
            }
            StoreKind::Postgres(url) => {
                let at = postgres::describe(&url.0);
                log::info!("conversations are stored in PostgreSQL at {at}");
                let store = PostgresStore::open(&url.0)
                    .await
                    .map_err(|source| StartupError::Postgres { at, source })?;
                (Arc::new(store), "postgres")
            }
            StoreKind::Memory => {
                log::warn!("conversations are kept in memory only: they are lost when chatgate stops");
                (Arc::new(MemoryStore::default()), "memory")
            }
        };
        let store = metrics.measure_store(store, kind)?;
        let (generations, limiter): (Arc<dyn Generations>, Arc<dyn Limiter>) = match &settings.bus {
            Some(url) => {
                let at = bus::describe(&url.0);
                log::info!(
                    "live answers, stop requests and client limits are shared with the other replicas through Redis at {at}"
                );
                let counters = metrics.bus_counters()?;
                let joined = BusGenerations::join(&url.0, Arc::clone(&store), settings.heartbeat, counters)
                    .await
                    .map_err(|source| StartupError::Bus { at, source })?;
                let limiter = Arc::new(joined.limiter(settings.limits));
                (Arc::new(joined), limiter)
            }
            None => (
                Arc::new(LocalGenerations::default()),
                Arc::new(LocalLimiter::new(settings.limits)),
            ),
        };
        let router = Router::build(&settings.upstream, &settings.model, settings.max_answer_bytes)?
            .measured_by(Arc::clone(&metrics.upstream));
        log_upstreams(&settings.upstream, &settings.model);
        if !routes::web::is_built(&settings.web_dir) {
            log::warn!(
                "no chat page in {}: build it with `npm --prefix web ci && npm --prefix web run build`",
                settings.web_dir.display()
            );
        }
        let presets = Presets::load(&settings.prompts_dir).map_err(StartupError::Prompts)?;
        let keys = match settings.auth_on() {
            true => {
                let keys = Keyring::load(settings.api_keys.as_deref(), settings.api_keys_file.as_deref())?;
                log::info!(
                    "{} client key(s): every route but the page and /healthz needs one",
                    keys.current().len()
                );
                Some(keys)
            }
            false => None,
        };

        let listener = TcpListener::bind(&settings.listen).map_err(|source| StartupError::Bind {
            addr: settings.listen.clone(),
            source,
        })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen.clone(),
            source,
        })?;
        let shared_listener = listener
            .try_clone()
            .map(socket2::Socket::from)
            .map_err(|source| StartupError::Bind {
                addr: settings.listen.clone(),
                source,
            })?;
        let state = web::Data::new(AppState {
            settings,
            store,
            router,
            presets,
            generations,
            unsaved: Arc::new(Unsaved::default()),
            stopping: AtomicBool::new(false),
            keys,
            limiter,
            relays: Relays::new(),
            metrics,
        });
        if state.keys.as_ref().is_some_and(|k| k.file().is_some()) {
            reload_keys_on_hangup(state.clone())?;
        }
        let app_state = state.clone();
        let workers = state.settings.workers;
        // actix's own answers (a malformed or late head) are made JSON on the way out.
        let refusals = Arc::new(Refusals::new(
            state.settings.request_timeout,
            state.metrics.requests.clone(),
        ));
        // actix-web's `HttpServer`, built from its parts (actix-server, actix-http) so
        // that each connection can be a `Connection` rather than the bare socket.
        let mut server = Server::build()
            // SIGTERM and SIGINT are handled in `run_until_stopped`: actix's own handling would
            // drop running answers (SIGINT) or hold them past the grace without a last frame.
            .disable_signals()
            // Stopped only once every answer has ended (see `run_until_stopped`): readers have
            // their last frames, so connections need little time to finish.
            .shutdown_timeout(LAST_FRAMES_SECS);
        // actix's default: one worker per CPU the process may run on.
        if let Some(workers) = workers {
            server = server.workers(workers);
        }
        let stopping = server.graceful_shutdown_signal();
        let server = server
            .listen("chatgate", listener, move || {
                // Called on each worker's thread as it starts: its upstream clients are made
                // now, not on its first answer.
                state.router.warm();
                let refusals = Arc::clone(&refusals);
                let accept = fn_service(move |socket: TcpStream| {
                    // Frames are small writes: with Nagle's algorithm on, a frame can wait
                    // for the ACK of the previous one (tens of ms with delayed ACKs).
                    let _ = socket.set_nodelay(true);
                    let peer = socket.peer_addr().ok();
                    ready(Ok::<_, DispatchError>((
                        Connection::new(socket, Arc::clone(&refusals)),
                        peer,
                    )))
                });
                let stopping = stopping.clone();
                let http = HttpService::build()
                    // Keep-alive connections close at a shutdown, as `HttpServer`'s do.
                    .graceful_shutdown_signal(move || {
                        let stopping = stopping.clone();
                        async move { stopping.notified().await }
                    })
                    // A request's head must arrive within the request timeout of connecting
                    // (the body's own deadline is in `routes::conv::read_body`). actix answers
                    // a late head with a 408 (made JSON, see `edge::refusals`) and closes.
                    .client_request_timeout(state.settings.request_timeout)
                    // `HttpServer`'s: how long a connection may linger after its last answer.
                    .client_disconnect_timeout(Duration::from_secs(1))
                    // A client that closes its side has gone away: notice it even while the
                    // stream is quiet, so that its answer's grace starts (see
                    // generation/runner.rs).
                    .h1_allow_half_closed(false)
                    .local_addr(address)
                    .h1(map_config(
                        app(state.clone()).into_factory().map_err(|e| e.error_response()),
                        // Its host and address serve URL generation, which no route uses.
                        |()| AppConfig::default(),
                    ));
                accept.and_then(http)
            })
            .map_err(|source| StartupError::Bind {
                addr: address.to_string(),
                source,
            })?
            .run();
        Ok(Self {
            address,
            server,
            state: app_state,
            listener: shared_listener,
        })
    }

    /// The address really bound (port 0 becomes a free port).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Stops the server from elsewhere (tests restart it on the same store).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The live generations (tests look at them to see that none is left behind).
    pub fn generations(&self) -> Arc<dyn Generations> {
        Arc::clone(&self.state.generations)
    }

    /// Serves until stopped: by [`Application::handle`], or by SIGTERM or SIGINT, which
    /// stop accepting at once, let running answers finish for the shutdown grace, then end
    /// each with a last frame (code `gateway_stopping`) after storing its text.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let listener = self.listener;
        let on_signal = tokio::spawn(async move {
            let signal = stop_signal().await?;
            state.stopping.store(true, Ordering::SeqCst);
            let grace = state.settings.shutdown_grace;
            let live = || state.generations.live() + state.relays.live();
            log::info!(
                "{signal}: no new connections; {} running answer(s) have {} s to finish",
                live(),
                grace.as_secs_f64()
            );
            refuse_connections(&handle, &listener).await;
            // Generations, and the answers /v1 relays (which are none).
            let drained = || async { tokio::join!(state.generations.drained(), state.relays.drained()) };
            if tokio::time::timeout(grace, drained()).await.is_err() {
                log::warn!("shutdown grace over: ending {} running answer(s)", live());
                state.generations.shutdown();
                state.relays.end_all();
            }
            // Each ended answer is stored before its readers get the last frame.
            let last = Duration::from_secs(LAST_FRAMES_SECS);
            if tokio::time::timeout(last, drained()).await.is_err() {
                log::error!("{} answer(s) did not end in time", live());
            }
            // Only now: actix stops a worker with no open connection at once, and with it
            // every task on its thread, the runners of background answers included.
            handle.stop(true).await;
            Some(())
        });
        let served = self.server.await;
        if self.state.stopping.load(Ordering::SeqCst) {
            let _ = on_signal.await;
        } else {
            on_signal.abort();
        }
        served
    }
}

/// Says where answers come from (never a key).
fn log_upstreams(upstream: &UpstreamKind, model: &str) {
    let with_key = |key: &Option<String>| match key {
        Some(_) => "with an API key",
        None => "without an API key",
    };
    match upstream {
        UpstreamKind::OpenAi { base_url, key } => {
            log::info!(
                "upstream: {base_url}/chat/completions, default model {model}, {}",
                with_key(key)
            );
        }
        UpstreamKind::Anthropic { base_url, key } => {
            log::info!(
                "upstream: {base_url}/v1/messages (Anthropic), default model {model}, {}",
                with_key(key)
            );
        }
        UpstreamKind::Routed(routing) => {
            for u in &routing.upstreams {
                log::info!(
                    "upstream {}: {} at {}, {}",
                    u.name,
                    u.kind.as_str(),
                    u.base_url,
                    with_key(&u.key)
                );
            }
            for m in &routing.models {
                let targets: Vec<String> = m
                    .targets
                    .iter()
                    .map(|t| format!("{}/{}", routing.upstreams[t.upstream].name, t.model))
                    .collect();
                log::info!("model {}: {}", m.name, targets.join(", then "));
            }
            log::info!(
                "default model {model}; other models go to upstream {} as named",
                routing.upstreams[0].name
            );
        }
        UpstreamKind::Demo { .. } => {
            log::warn!("==============================================================");
            log::warn!("DEMO MODE: no upstream is configured (OPENAI_API_KEY, OPENAI_BASE_URL or ANTHROPIC_API_KEY),");
            log::warn!("so every answer is a canned demo text, not a language model's.");
            log::warn!("==============================================================");
        }
    }
}

/// Re-reads the keys file on every SIGHUP. Watched from start-up on, so that a SIGHUP never
/// finds the default action (ending the process) in place.
fn reload_keys_on_hangup(state: web::Data<AppState>) -> Result<(), StartupError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).map_err(StartupError::Hangup)?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(keys) = &state.keys else { return };
            match keys.reload() {
                Ok(n) => log::info!("SIGHUP: client keys reloaded, {n} key(s)"),
                Err(e) => log::error!("SIGHUP: the client keys were not reloaded, the old ones stay: {e}"),
            }
        }
    });
    Ok(())
}

/// Stops accepting, and makes new connections fail at once instead of waiting in the
/// listen queue: actix's pause only stops calling accept, and its graceful stop waits for
/// the running answers (see above). Shutting down a listening socket's reading side takes
/// it out of the listening state (Linux): connection attempts are then refused.
async fn refuse_connections(handle: &ServerHandle, listener: &socket2::Socket) {
    handle.pause().await;
    if let Err(e) = listener.shutdown(std::net::Shutdown::Read) {
        log::warn!("could not close the listening socket early ({e}); new connections wait in its queue");
    }
}

/// Seconds given to answers ended at the end of the shutdown grace to be stored and sent.
const LAST_FRAMES_SECS: u64 = 10;

/// Resolves with the name of the first SIGTERM or SIGINT; `None` if they cannot be watched.
async fn stop_signal() -> Option<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot watch for SIGTERM and SIGINT: {e}");
            return None;
        }
    };
    tokio::select! {
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
    }
}

/// The routes and the middleware in front of them, on one worker's thread.
fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let settings = &state.settings;
    // The last `wrap` is the outermost: the edge (counted, headers and JSON errors on
    // everything, the host and cross-site checks), then CORS, then the routes.
    App::new()
        .wrap(cors(&settings.cors))
        .wrap(from_fn(edge::pass))
        .app_data(state.clone())
        // One resource per path, so that another method gets 405 with `Allow`, each
        // labelled with its path for the request count (`resource`). Fixed paths first: a
        // path with `{id}` is matched by a regular expression.
        .service(resource("/conv").post(routes::conv::post))
        .service(resource("/v1/chat/completions").post(routes::v1::chat_completions))
        .service(resource("/v1/models").get(routes::v1::models))
        .service(resource("/conversations").get(routes::conversations::list))
        .service(resource("/prompts").get(routes::prompts::list))
        .service(resource("/config").get(routes::config::get))
        .service(resource("/healthz").get(routes::health::get))
        .service(resource("/metrics").get(routes::metrics::get))
        .service(resource("/conv/{id}/stream").get(routes::stream::get))
        .service(resource("/conv/{id}/stop").post(routes::stop::post))
        .service(
            resource("/conv/{id}")
                .get(routes::conversations::get)
                .delete(routes::conversations::delete),
        )
        .configure(|cfg| routes::web::configure(&settings.web_dir, cfg))
        .default_service(web::to(routes::web::fallback))
}

fn cors(origins: &CorsOrigins) -> Cors {
    let cors = Cors::default()
        .allowed_methods(["GET", "POST", "DELETE"])
        .allow_any_header()
        .expose_headers(["retry-after"])
        .max_age(3600);
    match origins {
        CorsOrigins::Any => cors.allow_any_origin(),
        listed => {
            let listed = listed.clone();
            cors.allowed_origin_fn(move |origin, _| origin.to_str().is_ok_and(|o| origin::cors_allows(&listed, o)))
        }
    }
}
