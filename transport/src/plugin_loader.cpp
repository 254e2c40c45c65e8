// Placeholder until the plugin loader lands.
namespace kvferry::transport {
int plugin_loader_placeholder() { return 0; }
}  // namespace kvferry::transport
