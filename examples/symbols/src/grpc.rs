//! The gRPC service `symbols.v1.Symbols`: the same operations, checks and error classes as the
//! HTTP API, over [`crate::store::Symbols`]. Only the translation between protobuf messages and
//! the store's types lives here.
//!
//! Reads are open; `CreateSymbol`, `UpdateSymbol` and `DeleteSymbol` need `authorization:
//! Bearer <token>` metadata whose claims carry [`WRITE_ROLE`](crate::WRITE_ROLE)
//! (`UNAUTHENTICATED` without a valid token, `PERMISSION_DENIED` without the role), as on HTTP.

use keel::grpc::auth::JwtInterceptor;
use keel::security::jwt::{AuthRejection, Claims, HasRoles, Jwt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::error::SymbolError;
use crate::model::{self, NewSymbol, PageRequest, SymbolPatch};
use crate::proto::v1::symbols_server::{Symbols as SymbolsApi, SymbolsServer};
use crate::proto::v1::{
    CreateSymbolRequest, DeleteSymbolRequest, DeleteSymbolResponse, GetSymbolRequest, ListSymbolsRequest,
    ListSymbolsResponse, Symbol, UpdateSymbolRequest,
};
use crate::proto::{json_to_struct, struct_to_json, timestamp};
use crate::store::Symbols;

/// The `Symbols` gRPC service on a store.
#[derive(Debug, Clone)]
pub struct SymbolsService {
    symbols: Symbols,
}

impl SymbolsService {
    /// The service over `symbols`.
    pub fn new(symbols: Symbols) -> Self {
        Self { symbols }
    }

    /// The tonic server to register (`Setup::grpc_service`): a call's token, when it has one,
    /// is verified with `jwt` before the handler runs (a bad one is refused there).
    pub fn server(self, jwt: Jwt) -> InterceptedService<SymbolsServer<Self>, JwtInterceptor<Claims>> {
        SymbolsServer::with_interceptor(self, JwtInterceptor::new(jwt).optional())
    }
}

/// Refuses a call whose (already verified) claims do not carry the write role.
fn writer<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<Claims>() {
        None => Err(keel::grpc::status(AuthRejection::missing())),
        Some(c) if !c.has_role(crate::WRITE_ROLE) => {
            Err(keel::grpc::status(AuthRejection::forbidden(crate::WRITE_ROLE)))
        }
        Some(_) => Ok(()),
    }
}

/// A stored symbol as the message.
fn to_message(s: &model::Symbol) -> Symbol {
    Symbol {
        id: s.id.to_string(),
        project_id: s.project_id.clone(),
        name: s.name.clone(),
        kind: s.kind.clone(),
        data: Some(json_to_struct(&s.data)),
        version: s.version,
        create_time: Some(timestamp(s.created_at)),
        update_time: Some(timestamp(s.updated_at)),
    }
}

/// `data` of a request as a JSON object (a number JSON cannot hold is refused, naming it).
fn data(d: Option<prost_types::Struct>) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SymbolError> {
    d.map(|s| struct_to_json(s).map_err(|path| SymbolError::invalid(&path, "must be a finite number"))).transpose()
}

#[tonic::async_trait]
impl SymbolsApi for SymbolsService {
    async fn create_symbol(&self, request: Request<CreateSymbolRequest>) -> Result<Response<Symbol>, Status> {
        writer(&request)?;
        let r = request.into_inner();
        let input = NewSymbol { name: r.name, kind: r.kind, data: data(r.data)? };
        let symbol = self.symbols.create(&r.project_id, input).await?;
        Ok(Response::new(to_message(&symbol)))
    }

    async fn get_symbol(&self, request: Request<GetSymbolRequest>) -> Result<Response<Symbol>, Status> {
        let r = request.into_inner();
        let symbol = self.symbols.get(&r.project_id, &r.id).await?;
        Ok(Response::new(to_message(&symbol)))
    }

    async fn update_symbol(&self, request: Request<UpdateSymbolRequest>) -> Result<Response<Symbol>, Status> {
        writer(&request)?;
        let r = request.into_inner();
        let patch =
            SymbolPatch { name: r.name, kind: r.kind, data: data(r.data)?, expected_version: r.expected_version };
        let symbol = self.symbols.update(&r.project_id, &r.id, patch).await?;
        Ok(Response::new(to_message(&symbol)))
    }

    async fn delete_symbol(
        &self,
        request: Request<DeleteSymbolRequest>,
    ) -> Result<Response<DeleteSymbolResponse>, Status> {
        writer(&request)?;
        let r = request.into_inner();
        self.symbols.delete(&r.project_id, &r.id, r.expected_version).await?;
        Ok(Response::new(DeleteSymbolResponse {}))
    }

    async fn list_symbols(
        &self,
        request: Request<ListSymbolsRequest>,
    ) -> Result<Response<ListSymbolsResponse>, Status> {
        let r = request.into_inner();
        // proto3 cannot tell 0 from unset: a limit of 0 asks for the default page size.
        let page =
            PageRequest { offset: Some(i64::from(r.offset)), limit: (r.limit != 0).then_some(i64::from(r.limit)) };
        let page = self.symbols.list(&r.project_id, page).await?;
        Ok(Response::new(ListSymbolsResponse {
            symbols: page.items.iter().map(to_message).collect(),
            total_count: page.total_count,
            has_next: page.has_next,
        }))
    }
}
