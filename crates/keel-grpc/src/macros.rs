//! Boilerplate shared by the middleware modules.

/// `impl Layer<S> for $layer` whose service is `$service { inner, layer: self.clone() }`.
macro_rules! layer_with_config {
    ($layer:ident => $service:ident) => {
        impl<S> tower::Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service { inner, layer: self.clone() }
            }
        }
    };
}

pub(crate) use layer_with_config;
