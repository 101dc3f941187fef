/**
 * nbdeploy in JupyterLab: the "Deployments" sidebar, and "Deploy" / "Run pipeline" on the
 * notebook toolbar and in the command palette.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IFrame, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon, ToolbarButton } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import { createDashboard, DashboardView } from './dashboard';
import { openOperationDialog } from './dialog';
import { DeploymentsPanel } from './panel';

export const PLUGIN_ID = 'nbdeploy-labextension:plugin';

namespace CommandIDs {
  export const deploy = 'nbdeploy:deploy';
  export const runPipeline = 'nbdeploy:run-pipeline';
  export const openPanel = 'nbdeploy:open-panel';
  export const openDashboard = 'nbdeploy:open-dashboard';
}

const deployIcon = new LabIcon({
  name: 'nbdeploy:deploy',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<path class="jp-icon3" fill="#616161" d="M12 2c3.3 2 5 5.3 5 9.2V15l2 2.5V20h-3.2l-1-2h-5.6l-1 2H5v-2.5L7 15v-3.8C7 7.3 8.7 4 12 2zm0 6.5a1.8 1.8 0 1 0 0 3.6 1.8 1.8 0 0 0 0-3.6zM10.5 21h3l-1.5 2z"/>' +
    '</svg>'
});

const runIcon = new LabIcon({
  name: 'nbdeploy:run-pipeline',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<path class="jp-icon3" fill="#616161" d="M3 5h6v4H3zm12 0h6v4h-6zM9 15h6v4H9zM6 9v3h12V9h-2v1H8V9zm5 3h2v3h-2z"/>' +
    '</svg>'
});

/** A path relative to the server root, or null when `absolute` lies outside it. */
export function relativeToRoot(absolute: string, root = PageConfig.getOption('serverRoot')): string | null {
  if (!root || root.startsWith('~')) {
    return null;
  }
  const normal = (path: string) => path.replace(/\\/g, '/').replace(/\/+$/, '');
  const base = normal(root);
  const target = normal(absolute);
  if (!target.startsWith(`${base}/`)) {
    return null;
  }
  return target.slice(base.length + 1);
}

/** The "Deploy" and "Run pipeline" buttons of every notebook's toolbar. */
class NotebookButtons implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(private readonly app: JupyterFrontEnd) {}

  createNew(panel: NotebookPanel): IDisposable {
    const { commands } = this.app;
    const deploy = new ToolbarButton({
      className: 'nbdl-toolbar-deploy',
      icon: deployIcon,
      label: 'Deploy',
      tooltip: 'Deploy a function of this notebook as a service (nbdeploy)',
      onClick: () => void commands.execute(CommandIDs.deploy, { path: panel.context.path })
    });
    const run = new ToolbarButton({
      className: 'nbdl-toolbar-run',
      icon: runIcon,
      label: 'Run pipeline',
      tooltip: 'Run this notebook as a recorded pipeline run, with parameters (nbdeploy)',
      onClick: () => void commands.execute(CommandIDs.runPipeline, { path: panel.context.path })
    });
    const toolbar = panel.toolbar;
    if (!toolbar.insertAfter('cellType', 'nbdeploy-run', run)) {
      toolbar.addItem('nbdeploy-run', run);
    }
    if (!toolbar.insertAfter('cellType', 'nbdeploy-deploy', deploy)) {
      toolbar.addItem('nbdeploy-deploy', deploy);
    }
    return new DisposableDelegate(() => {
      deploy.dispose();
      run.dispose();
    });
  }
}

/** A "Run pipeline" button on the editor of a pipeline file (``*.yaml``, ``*.yml``). */
class PipelineFileButton implements DocumentRegistry.WidgetExtension {
  constructor(private readonly afterRun: () => void) {}

  createNew(widget: Widget, context: DocumentRegistry.Context): IDisposable {
    if (!/\.ya?ml$/i.test(context.path)) {
      return new DisposableDelegate(() => undefined);
    }
    const run = new ToolbarButton({
      className: 'nbdl-toolbar-run',
      icon: runIcon,
      label: 'Run pipeline',
      tooltip: 'Run this pipeline (its steps in order), recorded as pipeline runs (nbdeploy)',
      onClick: () => {
        const save = context.model.dirty && !context.model.readOnly ? context.save() : Promise.resolve();
        void save.then(() => openOperationDialog('run', context.path, this.afterRun));
      }
    });
    (widget as unknown as { toolbar: { addItem: (name: string, item: ToolbarButton) => boolean } }).toolbar.addItem(
      'nbdeploy-run',
      run
    );
    return new DisposableDelegate(() => run.dispose());
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'nbdeploy: deployments and runs in a sidebar; deploy and run notebooks from their toolbar',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    documents: IDocumentManager | null
  ) => {
    const { commands, shell } = app;
    const dashboards = new WidgetTracker<MainAreaWidget<DashboardView>>({
      namespace: 'nbdeploy-dashboard'
    });

    const panel = new DeploymentsPanel({
      openDashboard: name => void commands.execute(CommandIDs.openDashboard, { name }),
      relativeToRoot: path => (documents ? relativeToRoot(path) : null),
      openPath: path => {
        documents?.openOrReveal(path);
      },
      openRunOutput: (runId, title) => {
        // The server renders the notebook to static HTML; the frame runs no script.
        const frame = new IFrame({ sandbox: [] });
        // In the page's theme: a white page inside JupyterLab Dark would glare.
        const dark = document.body.dataset.jpThemeLight === 'false';
        frame.url =
          URLExt.join(PageConfig.getBaseUrl(), 'nbdeploy/api/runs', encodeURIComponent(runId), 'output') +
          (dark ? '?theme=dark' : '');
        const widget = new MainAreaWidget({ content: frame });
        widget.id = `nbdeploy-run-output-${runId}`;
        widget.title.label = title;
        widget.title.closable = true;
        shell.add(widget, 'main');
        shell.activateById(widget.id);
      }
    });
    panel.title.icon = deployIcon;
    shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, 'nbdeploy-deployments');

    const notebookPath = (args: Record<string, unknown>): string | null => {
      if (typeof args.path === 'string' && args.path) {
        return args.path;
      }
      return notebooks.currentWidget?.context.path ?? null;
    };
    const saveFirst = async (path: string): Promise<void> => {
      const open = notebooks.find(widget => widget.context.path === path);
      if (open && open.context.model.dirty && !open.context.model.readOnly) {
        await open.context.save();
      }
    };
    const afterOperation = () => void panel.refresh();

    commands.addCommand(CommandIDs.deploy, {
      label: args => (args.isPalette ? 'Deploy notebook…' : 'Deploy'),
      caption: 'Deploy a function of the notebook as a service',
      icon: deployIcon,
      isEnabled: args => notebookPath(args) !== null,
      execute: async args => {
        const path = notebookPath(args);
        if (path) {
          await saveFirst(path);
          await openOperationDialog('deploy', path, afterOperation);
        }
      }
    });
    commands.addCommand(CommandIDs.runPipeline, {
      label: args => (args.isPalette ? 'Run notebook as pipeline…' : 'Run pipeline'),
      caption: 'Run the notebook with parameters, recorded as a pipeline run',
      icon: runIcon,
      isEnabled: args => notebookPath(args) !== null,
      execute: async args => {
        const path = notebookPath(args);
        if (path) {
          await saveFirst(path);
          await openOperationDialog('run', path, afterOperation);
        }
      }
    });
    commands.addCommand(CommandIDs.openPanel, {
      label: 'Show deployments',
      caption: 'Open the nbdeploy Deployments sidebar',
      execute: () => {
        shell.activateById(panel.id);
        void panel.refresh();
      }
    });
    commands.addCommand(CommandIDs.openDashboard, {
      label: args => (typeof args.name === 'string' ? `Dashboard of ${args.name}` : 'Deployment dashboard'),
      caption: 'Traffic, latency, errors and drift of a deployment',
      execute: args => {
        const name = typeof args.name === 'string' ? args.name : '';
        if (!name) {
          return;
        }
        let widget = dashboards.find(each => each.content.deploymentName === name);
        if (!widget || widget.isDisposed) {
          widget = createDashboard(name);
          void dashboards.add(widget);
          shell.add(widget, 'main');
        }
        shell.activateById(widget.id);
      }
    });
    restorer?.restore(dashboards, {
      command: CommandIDs.openDashboard,
      args: widget => ({ name: widget.content.deploymentName }),
      name: widget => widget.content.deploymentName
    });

    notebooks.currentChanged.connect(() => {
      commands.notifyCommandChanged(CommandIDs.deploy);
      commands.notifyCommandChanged(CommandIDs.runPipeline);
    });
    if (palette) {
      const category = 'nbdeploy';
      palette.addItem({ command: CommandIDs.deploy, category, args: { isPalette: true } });
      palette.addItem({ command: CommandIDs.runPipeline, category, args: { isPalette: true } });
      palette.addItem({ command: CommandIDs.openPanel, category });
    }
    app.docRegistry.addWidgetExtension('Notebook', new NotebookButtons(app));
    app.docRegistry.addWidgetExtension('Editor', new PipelineFileButton(afterOperation));
  }
};

export default plugin;
