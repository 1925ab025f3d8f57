//! Boilerplate shared by the middleware modules, here and in keel-grpc's.

/// `impl Layer<S> for $layer` whose service is `$service { inner, layer: self.clone() }`.
#[doc(hidden)]
#[macro_export]
macro_rules! layer_with_config {
    ($layer:ident => $service:ident) => {
        impl<S> $crate::__private::tower::Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service { inner, layer: self.clone() }
            }
        }
    };
}
